"""Damaged result files never feed the numbers: DONE records each file's size and sha256;
``load`` leaves damaged units out (one warning, ``df.attrs["damaged"]``, ``damaged(root)``),
the pipeline recomputes them, arrays are checked before they are read, the report says so,
and a killed checkpoint writer's temp files do not stay."""

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.tables import format_number
from landscape import pipeline, results
from landscape.grid import run_states, write_root_report
from landscape.identity import identify
from landscape.results import COLUMNS, DamagedResultsWarning, DamagedUnitError
from landscape.stages.prune import PruneConfig
from test_reliability import tiny

IDENT = {"run_id": "c/seed=0", "arch": "vgg19", "dataset": "digits", "pool_level": 2,
         "pool_kernel": 3, "pool_stride": 2, "pool_padding": 1, "receptive_field": 359,
         "width": 0.125, "seed": 0, "stage": "train"}


def cut_last_value(rows: Path) -> None:
    """Truncate ``rows`` inside the value of its last row: every row is still there (the
    count DONE recorded) and the file still parses, but the last value is cut."""
    text = rows.read_text()
    column = text.splitlines()[0].split(",").index("value")
    last_start = text.rstrip("\n").rfind("\n") + 1
    fields = text[last_start:].split(",")
    cut = last_start + sum(len(f) + 1 for f in fields[:column]) + 1
    rows.write_text(text[:cut])


def write_unit(root: Path, seed: int, arrays: dict | None = None) -> Path:
    rows = [{**IDENT, "run_id": f"c/seed={seed}", "seed": seed, "metric": "test_acc",
             "value": 0.5 + seed / 10, "index": i} for i in (1, 2, 3)]
    return results.write_stage(root / "c" / f"seed={seed}", "train", rows, arrays=arrays)


def test_done_records_size_and_sha256_of_each_file(tmp_path):
    unit = write_unit(tmp_path, 0, arrays={"m": np.ones(3)})
    files = json.loads((unit / "DONE").read_text())["files"]
    for name in ("rows.csv", "arrays.npz"):
        data = (unit / name).read_bytes()
        assert files[name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_truncated_rows_csv_with_the_same_row_count_is_left_out(tmp_path):
    cfg = tiny(tmp_path)
    pipeline.run(cfg)
    run_dir = results.run_paths(tmp_path, identify(cfg).cell_name, 0).run_dir
    unit = results.stage_dir(run_dir, "train")
    rows_before = len(results.read_stage(run_dir, "train"))
    cut_last_value(unit / "rows.csv")
    assert len(pd.read_csv(unit / "rows.csv")) == rows_before  # parses, same count
    with pytest.warns(DamagedResultsWarning, match=r"1 damaged stage unit.*seed=0/stages/train"
                      r".*Running the same command again"):
        df = results.load(tmp_path)
    assert not (df["stage"] == "train").any() and (df["stage"] == "receptive_field").any()
    (entry,) = df.attrs["damaged"]
    rel = unit.relative_to(tmp_path).as_posix()
    assert entry["unit"] == rel and "rows.csv" in entry["reason"]
    (bad,) = results.damaged(tmp_path).itertuples()
    assert (bad.run_id, bad.unit) == (f"{identify(cfg).cell_name}/seed=0", "train")
    assert "rows.csv" in bad.reason and bad.reason.endswith("(damaged)")
    state = run_states(tmp_path).set_index("unit").loc["train"]
    assert state["state"] == "stale" and "rows.csv" in state["reason"]
    assert "damaged" in state["reason"]


@pytest.mark.parametrize("damage, reason", [
    ("empty_done", "DONE marker is empty"),
    ("garbage_done", "DONE marker is not JSON"),
    ("list_done", "DONE marker is not a JSON object"),
    ("appended_rows", "rows.csv holds"),
    ("unrecorded_arrays", "arrays.npz that its DONE does not record"),
])
def test_a_damaged_unit_is_not_loaded(tmp_path, damage, reason):
    write_unit(tmp_path, 0)
    unit = write_unit(tmp_path, 1)
    if damage == "empty_done":
        (unit / "DONE").write_text("")
    elif damage == "garbage_done":
        (unit / "DONE").write_text("{not json")
    elif damage == "list_done":
        (unit / "DONE").write_text("[1, 2]")
    elif damage == "appended_rows":
        with open(unit / "rows.csv", "a") as f:
            f.write("garbage,1,2\nmore,garbage\n")
    else:
        np.savez(unit / "arrays.npz", x=np.ones(2))
    with pytest.warns(DamagedResultsWarning, match="1 damaged"):
        df = results.load(tmp_path)
    assert df["seed"].unique().tolist() == [0]
    assert [d["unit"] for d in df.attrs["damaged"]] == ["c/seed=1/stages/train"]
    assert reason in df.attrs["damaged"][0]["reason"]
    assert results.damaged(tmp_path)["reason"].str.contains(reason, regex=False).all()
    assert results.stale_reason(unit.parents[1], "train", {}) is not None


def test_read_stage_checks_the_rows_against_done_and_clears_a_damaged_unit(tmp_path):
    run_dir = write_unit(tmp_path, 0).parents[1]
    assert list(results.read_stage(run_dir, "train")["value"]) == [0.5, 0.5, 0.5]
    cut_last_value(results.stage_dir(run_dir, "train") / "rows.csv")
    with pytest.raises(DamagedUnitError, match=r"stage unit train of .*seed=0 is damaged: its "
                       r"rows\.csv .*Running its stage again"):
        results.read_stage(run_dir, "train")
    assert not results.is_done(run_dir, "train")  # the next run recomputes it
    with pytest.raises(FileNotFoundError, match="stage train of .* is not done; run it first"):
        results.read_stage(run_dir, "train")


def test_an_intact_root_loads_without_warning(tmp_path):
    write_unit(tmp_path, 0, arrays={"m": np.ones(3)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = results.load(tmp_path)
    assert len(df) == 3 and df.attrs["damaged"] == []
    assert results.damaged(tmp_path).empty
    (tmp_path / "empty").mkdir()
    assert results.load(tmp_path / "empty").columns.tolist() == COLUMNS


def test_a_marker_of_an_older_version_without_files_still_loads(tmp_path):
    unit = write_unit(tmp_path, 0, arrays={"m": np.arange(3)})
    done = json.loads((unit / "DONE").read_text())
    del done["files"]
    (unit / "DONE").write_text(json.dumps(done))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(results.load(tmp_path)) == 3
    assert results.stale_reason(unit.parents[1], "train", {}) is None
    assert results.read_arrays(unit.parents[1], "train")["m"].tolist() == [0, 1, 2]
    assert results.damaged(tmp_path).empty
    # its row count is still checked, as before
    rows = unit / "rows.csv"
    rows.write_text("\n".join(rows.read_text().splitlines()[:2]) + "\n")
    assert "holds 1 rows, DONE recorded 3 (damaged)" in results.damaged(tmp_path)["reason"][0]


@pytest.mark.parametrize("root, error, match", [
    ("missing", FileNotFoundError, "no results folder at .*missing"),
    ("file", NotADirectoryError, "is a file, not a results folder"),
    (None, TypeError, "a results folder path .* is needed, got None"),
    ("", ValueError, "a results folder path is needed"),
])
def test_load_of_no_folder_raises(tmp_path, root, error, match):
    (tmp_path / "file").write_text("x")
    path = root if root in (None, "") else tmp_path / root
    with pytest.raises(error, match=match):
        results.load(path)
    with pytest.raises(error, match=match):
        results.load_arrays(path, "importance_init")


def test_a_truncated_prune_arrays_file_is_recomputed_before_its_finetune(tmp_path):
    cfg = tiny(tmp_path, prune=PruneConfig(enabled=True, rates=[0.5], finetune=True,
                                           finetune_epochs=1))
    pipeline.run(cfg)
    run_dir = results.run_paths(tmp_path, identify(cfg).cell_name, 0).run_dir
    units = {u.name: (s, c) for s, c, u in pipeline.stage_units(cfg, "run")}
    prune = next(n for n in units if n.startswith("prune_"))
    finetune = next(n for n in units if n.startswith("finetune_"))
    masks = results.read_arrays(run_dir, prune)
    arrays = results.stage_dir(run_dir, prune) / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:-40])
    for f in results.stage_dir(run_dir, finetune).iterdir():  # fine-tuning still to do
        f.unlink()
    stage, config = units[prune]
    why = stage.stale_reason(config, run_dir, prune)
    assert why is not None and "arrays.npz" in why and why.endswith("(damaged)")
    with pytest.warns(DamagedResultsWarning, match="left out of the arrays"):
        assert results.load_arrays(tmp_path, prune) == {}
    assert [r["unit"] for r in results.damaged(tmp_path).to_dict("records")] == [prune]
    with pytest.raises(DamagedUnitError, match=f"{prune} of .* is damaged: its arrays.npz.*"
                       "Running its stage again"):
        results.read_arrays(run_dir, prune)
    summary = pipeline.run(cfg)
    assert summary.ran == [prune, finetune] and summary.status == "ok"
    again = results.read_arrays(run_dir, prune)
    assert all(np.array_equal(again[k], masks[k]) for k in masks)
    assert results.damaged(tmp_path).empty
    df = results.load(tmp_path)
    assert (df["stage"] == "finetune").any()


def test_leftover_checkpoint_temp_files_are_removed(tmp_path):
    cfg = tiny(tmp_path)
    ckpt = results.run_paths(tmp_path, identify(cfg).cell_name, 0).checkpoints
    ckpt.mkdir(parents=True)
    (ckpt / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    pipeline.run(cfg)
    assert (ckpt / "final.pt").is_file() and not list(ckpt.glob(".*.tmp"))
    # a run killed later, resumed: training starts again under the unit's lock and cleans up
    (ckpt / ".best.pt.x9.tmp").write_bytes(b"partial")
    results.clear_done(ckpt.parent, "train")
    assert pipeline.run(cfg).ran == ["train"]
    assert not list(ckpt.glob(".*.tmp"))


def test_the_report_does_not_use_damaged_rows(tmp_path):
    for seed in (0, 1):
        pipeline.run(tiny(tmp_path, seed))
    cell = identify(tiny(tmp_path)).cell_name
    good = results.read_stage(tmp_path / cell / "seed=0", "train")
    acc = good.loc[good["metric"] == "test_acc", "value"].iloc[-1]
    rows = tmp_path / cell / "seed=1" / "stages" / "train" / "rows.csv"
    text = rows.read_text()  # its test accuracy overwritten in place: same size, same rows
    start = text.index("test_acc,") + len("test_acc,")
    value = text[start:text.index(",", start)]
    rows.write_text(text[:start] + "1." + "0" * (len(value) - 2) + text[start + len(value):])
    assert rows.stat().st_size == len(text) and len(pd.read_csv(rows)) == len(good)
    with pytest.warns(DamagedResultsWarning):
        md = write_root_report(tmp_path).read_text()
    dense = md.split("### Dense training")[1].split("###")[0]
    assert f"| RF 11 px (pool 1) | {format_number(acc * 100)} (n=1) |" in dense  # seed 0 only
    assert "Seeds: 0. " in md  # seed 1 has no trustworthy rows left
    section = md.split("## Failed or damaged stage units")[1]
    assert f"- {cell}/seed=1: train: its rows.csv" in section
    assert "1 damaged unit(s)" in section and "left out of every table" in section



def test_arrays_corrupted_in_place_are_caught_where_read_and_recomputed(tmp_path):
    """A same-size corruption passes the cheap size check of status and the pipeline; the
    sha256 where the arrays are read catches it, and the unit is recomputed next time."""
    cfg = tiny(tmp_path, prune=PruneConfig(enabled=True, rates=[0.5]))
    pipeline.run(cfg)
    run_dir = results.run_paths(tmp_path, identify(cfg).cell_name, 0).run_dir
    prune = next(u.name for _, _, u in pipeline.stage_units(cfg, "run")
                 if u.name.startswith("prune_"))
    arrays = results.stage_dir(run_dir, prune) / "arrays.npz"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(DamagedUnitError, match="sha256"):
        results.read_arrays(run_dir, prune)
    assert not results.is_done(run_dir, prune)  # unmarked: the next run recomputes it
    assert pipeline.run(cfg).ran == [prune]
    assert results.read_arrays(run_dir, prune)
