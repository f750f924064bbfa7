
import pandas as pd
import pytest

from landscape import results
from landscape.results import COLUMNS, SchemaError, load, read_stage, write_stage
from landscape.storage import atomic_write

IDENT = {"run_id": "c/seed=0", "arch": "vgg19", "dataset": "digits", "pool_level": 2,
         "pool_kernel": 3, "pool_stride": 2, "pool_padding": 1, "receptive_field": 359,
         "width": 0.125, "seed": 0, "stage": "train"}


def test_roundtrip_keeps_schema_and_values(tmp_path):
    rows = [{**IDENT, "metric": "test_acc", "value": 0.123456789012345678, "index": 3},
            {**IDENT, "metric": "diverged", "value": False},
            {**IDENT, "stage": "prune", "criterion": "magnitude", "prune_rate": 0.9,
             "finetuned": True, "metric": "test_acc", "value": 0.5, "layer": "features.0"}]
    write_stage(tmp_path / "run", "train", rows)
    df = read_stage(tmp_path / "run", "train")
    assert list(df.columns) == COLUMNS
    assert df["value"].tolist()[0] == 0.123456789012345678  # exact float round trip
    assert df["index"].tolist()[0] == 3 and pd.isna(df["index"].tolist()[1])
    assert df["finetuned"].tolist()[2] is True and pd.isna(df["finetuned"].tolist()[0])
    assert str(df["pool_level"].dtype) == "Int64" and str(df["metric"].dtype) == "string"
    assert results.is_done(tmp_path / "run", "train")
    assert results.read_done(tmp_path / "run", "train")["rows"] == 3


@pytest.mark.parametrize("row, match", [
    ({"metric": "accuracy", "value": 1.0}, "unknown metric 'accuracy'"),
    ({"metric": "test_acc", "value": "high"}, "value must be a number"),
    ({"metric": "test_acc", "value": 1.0, "step": 3}, r"unknown column\(s\) \['step'\]"),
])
def test_bad_rows_are_refused_and_nothing_is_written(tmp_path, row, match):
    with pytest.raises(SchemaError, match=match):
        write_stage(tmp_path, "train", [{**IDENT, **row}])
    assert not (tmp_path / "stages").exists()


def test_register_metric_is_snake_case_and_unique():
    results.register_metric("my_metric", "a test metric")
    results.register_metric("my_metric", "a test metric")  # idempotent
    with pytest.raises(SchemaError, match="'my_metric' is already registered: a test metric"):
        results.register_metric("my_metric", "something else")
    with pytest.raises(SchemaError, match="snake_case"):
        results.register_metric("MyMetric", "x")


def test_load_skips_unfinished_and_temp_files(tmp_path):
    write_stage(tmp_path / "a" / "seed=0", "train", [{**IDENT, "metric": "test_acc", "value": 0.5}])
    write_stage(tmp_path / "a" / "seed=1", "train",
                [{**IDENT, "seed": 1, "metric": "test_acc", "value": 0.7}])
    # an unfinished stage: rows but no DONE marker, and a stray temp file
    unfinished = tmp_path / "a" / "seed=2" / "stages" / "train"
    unfinished.mkdir(parents=True)
    (unfinished / "rows.csv").write_text("garbage")
    (unfinished / ".rows.csv.abc.tmp").write_text("partial")
    df = load(tmp_path)
    assert sorted(df["seed"].tolist()) == [0, 1]
    (tmp_path / "empty").mkdir()  # a folder with nothing finished yet: no rows, the columns
    assert load(tmp_path / "empty").columns.tolist() == COLUMNS


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def boom(f):
        f.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, boom, mode="w")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_every_metric_has_a_description():
    assert all(isinstance(v, str) and v for v in results.METRICS.values())
    assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(results.METRICS)


def test_cells_written_by_two_versions_of_the_rf_analysis_get_its_current_values(tmp_path):
    """Rows keep the receptive_field / global_mixing of the analysis that wrote them; a unit
    added after the analysis changed would split its cell in every table grouped by them.
    load gives every row of such a cell the values of its receptive_field stage (recomputed
    whenever the analysis changes) and says so; a cell without those rows is left as it is."""
    def unit(cell, seed, stage, rf, mixing):
        run = tmp_path / cell / (f"seed={seed}" if seed is not None else "cell")
        run_id = f"{cell}/seed={seed}" if seed is not None else cell
        metric = "rf_r_max" if stage == "receptive_field" else "test_acc"
        write_stage(run, stage, [{**IDENT, "run_id": run_id, "seed": seed, "stage": stage,
                                  "receptive_field": rf, "global_mixing": mixing,
                                  "metric": metric, "value": 1.0}])

    unit("a", None, "receptive_field", 244, False)  # recomputed by the current analysis
    unit("a", 0, "train", 212, None)  # written before, by an older one
    unit("a", 1, "hessian_final", 244, False)
    unit("b", 0, "train", 100, False)  # no receptive_field rows: kept
    unit("b", 1, "train", 101, False)
    unit("c", 0, "train", 50, True)  # agrees: untouched
    unit("c", None, "receptive_field", 50, True)
    with pytest.warns(results.DerivedColumnsWarning) as caught:
        df = load(tmp_path)
    (warning,) = caught
    assert "2 cell(s)" in str(warning.message)
    assert "set from each cell's current receptive_field rows: ['a']" in str(warning.message)
    assert "left as written" in str(warning.message) and "['b']" in str(warning.message)
    cell = df["run_id"].str.split("/seed=").str[0]
    got = df.assign(cell=cell).groupby("cell")[["receptive_field", "global_mixing"]].agg(set)
    assert got.loc["a"].tolist() == [{244}, {False}]
    assert got.loc["b", "receptive_field"] == {100, 101}
    assert got.loc["c"].tolist() == [{50}, {True}]
    assert str(df["receptive_field"].dtype) == "Int64" and str(df["global_mixing"].dtype) == "boolean"


def test_load_converts_every_unit_at_once_and_still_names_a_unit_its_schema_refuses(tmp_path):
    """The units' rows are typed in one conversion; a unit whose verified rows hold a value
    its column cannot hold (written by hand, or by an older schema) is left out as damaged,
    by name, and the others load with the schema's dtypes."""
    import json

    from landscape.results.integrity import fingerprint

    write_stage(tmp_path / "a" / "seed=0", "train",
                [{**IDENT, "metric": "test_acc", "value": 0.5, "index": 2}])
    write_stage(tmp_path / "a" / "seed=1", "train",
                [{**IDENT, "seed": 1, "metric": "test_acc", "value": 0.7},
                 {**IDENT, "seed": 1, "stage": "prune", "finetuned": False,
                  "metric": "test_acc", "value": 0.6}])
    good = load(tmp_path)
    assert good.dtypes.equals(results.to_frame([]).dtypes) and len(good) == 3
    assert good["finetuned"].isna().tolist() == [True, True, False]
    unit = tmp_path / "a" / "seed=1" / "stages" / "train"
    text = (unit / "rows.csv").read_bytes().replace(b",1,train,", b",one,train,")
    (unit / "rows.csv").write_bytes(text)
    done = json.loads((unit / "DONE").read_text())
    done["files"]["rows.csv"] = fingerprint(text)  # its marker agrees: only the value is bad
    (unit / "DONE").write_text(json.dumps(done))
    with pytest.warns(results.DamagedResultsWarning, match="1 damaged stage unit"):
        df = load(tmp_path)
    assert df["seed"].tolist() == [0] and df["index"].tolist() == [2]
    [bad] = df.attrs["damaged"]
    assert bad["unit"] == "a/seed=1/stages/train" and "cannot be read" in bad["reason"]


def test_load_reads_units_of_several_headers_and_old_markers_in_their_order(tmp_path,
                                                                          monkeypatch):
    """Units of the current header are parsed at once, told apart by their markers' row
    counts; a unit of an older header (fewer columns), one whose marker recorded no count,
    and a note with a line break each load as they did unit by unit, in the units' order."""
    import json

    from landscape.results import rows as rows_module
    from landscape.results.integrity import fingerprint
    from landscape.results.rows import read_rows

    def train(seed, value, note=None):
        return [{**IDENT, "seed": seed, "metric": "test_acc", "value": value, "note": note}]

    for seed in range(5):
        write_stage(tmp_path / "c" / f"seed={seed}", "train",
                    train(seed, seed / 10, "two\nlines" if seed == 3 else None))
    old = tmp_path / "c" / "seed=1" / "stages" / "train"  # written before 'unit' existed
    text = pd.read_csv(old / "rows.csv").drop(columns="unit").to_csv(index=False).encode()
    (old / "rows.csv").write_bytes(text)
    done = json.loads((old / "DONE").read_text())
    done["files"]["rows.csv"] = fingerprint(text)
    (old / "DONE").write_text(json.dumps(done))
    legacy = tmp_path / "c" / "seed=2" / "stages" / "train"  # a marker without a count
    done = json.loads((legacy / "DONE").read_text())
    del done["rows"]
    (legacy / "DONE").write_text(json.dumps(done))
    parses = []
    real = rows_module._parse
    monkeypatch.setattr(rows_module, "_parse", lambda *a, **k: parses.append(a[1]) or real(*a, **k))
    df = load(tmp_path)
    assert sorted(parses) == [["train"], ["train"], ["train"] * 3]  # 0, 3, 4 in one parse
    assert df["seed"].tolist() == [0, 1, 2, 3, 4] and df["value"].tolist() == [
        0.0, 0.1, 0.2, 0.3, 0.4]
    assert df["unit"].tolist() == ["train"] * 5 and df["note"].tolist()[3] == "two\nlines"
    one_by_one = pd.concat([read_rows((p / "rows.csv").read_bytes(), "train") for p in sorted(
        tmp_path.glob("c/seed=*/stages/train"))], ignore_index=True)
    pd.testing.assert_frame_equal(df, results.derived.align_derived(one_by_one),
                                  check_exact=True)
