"""analysis.report: completeness (missing runs), failed units, the written report and the CLI."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import report as report_module
from analysis.report import completeness, write_report
from landscape import results
from landscape.commands import report_main
from landscape.results import to_frame
from test_analysis import LEVELS, cell, reference_frame, synthetic_rows


@pytest.fixture(scope="module")
def partial():
    """The synthetic grid minus: the prune unit of (pool 2, seed 2), the CKA of pool 1 and the
    whole of (pool 1, seed 1) except its training."""
    df = to_frame(synthetic_rows())
    drop = (((df["stage"] == "prune") & (df["run_id"] == f"{cell(2)}/seed=2"))
            | ((df["stage"] == "cka_final") & (df["run_id"] == cell(1)))
            | ((df["run_id"] == f"{cell(1)}/seed=1") & (df["stage"] != "train")))
    return df[~drop]


def test_completeness_lists_exactly_the_removed_units(partial):
    c = completeness(partial)
    per_run_units = {"train", "prune magnitude @ 0.9", "finetune magnitude @ 0.9", "hessian_init",
                     "hessian_final", "importance_init"}
    assert len(c) == 2 * 3 * len(per_run_units) + 2 * 2  # + receptive_field and cka per cell
    missing = {(r.cell, None if pd.isna(r.seed) else int(r.seed), r.unit)
               for r in c[~c["present"]].itertuples()}
    expected = {(cell(2), 2, "prune magnitude @ 0.9"), (cell(1), None, "cka_final")}
    expected |= {(cell(1), 1, u) for u in per_run_units - {"train"}}
    assert missing == expected
    # a unit done with no rows (probes_border without an unproductive layer) is not missing
    empty = pd.DataFrame({"run_id": [f"{cell(1)}/seed=1", cell(1)],
                          "unit": ["hessian_init", "cka_final"]})
    c = completeness(partial, empty=empty)
    assert {(r.cell, None if pd.isna(r.seed) else int(r.seed), r.unit)
            for r in c[~c["present"]].itertuples()} == expected - {
        (cell(1), 1, "hessian_init"), (cell(1), None, "cka_final")}


def test_empty_units_are_the_done_markers_of_no_rows(tmp_path):
    results.write_stage(tmp_path / cell(1) / "seed=0", "probes_border", [])
    row = {"run_id": f"{cell(1)}/seed=0", "arch": "vgg19", "dataset": "cifar10", "pool_level": 1,
           "receptive_field": 181, "width": 1.0, "seed": 0, "stage": "train",
           "metric": "test_acc", "value": 0.5}
    results.write_stage(tmp_path / cell(1) / "seed=0", "train", [row])
    (tmp_path / cell(1) / "seed=1" / "stages" / "probes_border").mkdir(parents=True)  # not done
    assert results.empty_units(tmp_path).to_dict("records") == [
        {"run_id": f"{cell(1)}/seed=0", "unit": "probes_border"}]


def test_failures_reads_the_markers(tmp_path):
    d = tmp_path / cell(1) / "seed=0" / "stages" / "hessian_final"
    d.mkdir(parents=True)
    (d / "FAILED").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    (tmp_path / cell(1) / "cell" / "stages" / "cka_final").mkdir(parents=True)
    (tmp_path / cell(1) / "cell" / "stages" / "cka_final" / "FAILED").write_text("ValueError: x")
    f = results.failures(tmp_path)
    assert f.to_dict("records") == [
        {"run_id": cell(1), "unit": "cka_final", "reason": "ValueError: x"},
        {"run_id": f"{cell(1)}/seed=0", "unit": "hessian_final", "reason": "RuntimeError: boom"}]


def test_a_rebuilt_report_keeps_nothing_it_did_not_make_and_a_failed_one_changes_nothing(
        partial, tmp_path, monkeypatch):
    """A figure or table of the last report that this one does not make (e.g. one that pooled
    two fine-tune settings) is gone; files of the user's beside it stay; a build that fails
    leaves the last report whole."""
    out = tmp_path / "rep"
    write_report(partial, out)
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    (out / "figures" / "stale-pruning.png").write_bytes(b"old")
    (out / "tables" / "stale.csv").write_text("old")
    (out / "notes.txt").write_text("mine")
    write_report(partial, out)
    now = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert now == sorted(made + [Path("notes.txt")])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def fails(*args, **kwargs):
        raise RuntimeError("a figure failed")

    monkeypatch.setattr(report_module, "markdown", fails)
    with pytest.raises(RuntimeError, match="a figure failed"):
        write_report(partial.assign(value=partial["value"] + 1), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".report-")]
    monkeypatch.undo()
    blocks = report_module.report_blocks  # two tables of one name: one's files would be lost

    def twice(*args, **kwargs):
        made = blocks(*args, **kwargs)
        return made + [b for b in made if b[0] == "table" and b[1].name != "overview"][:1]

    monkeypatch.setattr(report_module, "report_blocks", twice)
    with pytest.raises(ValueError, match="two tables of the report are named"):
        write_report(partial, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_report_lists_missing_runs_and_links_every_figure(partial, tmp_path):
    (tmp_path / "res").mkdir()
    arrays = {"importance_init": {f"{cell(lv)}/seed={s}": {"mean_map": np.ones((4, 4))}
                                  for lv in LEVELS for s in (0, 1, 2)}}
    failures = pd.DataFrame([{"run_id": f"{cell(1)}/seed=0", "unit": "hessian_final",
                              "reason": "RuntimeError: boom"}])
    path = write_report(partial, tmp_path / "rep", arrays=arrays, title="T & <test>",
                        results_root=tmp_path / "res", reference=reference_frame(),
                        failures=failures)
    md, html = path.read_text(), (tmp_path / "rep" / "report.html").read_text()
    assert md.startswith("# T & <test>") and "<title>T &amp; &lt;test&gt;</title>" in html
    section = md.split("### Missing results")[1]
    assert f"- {cell(2)}, seed 2: prune magnitude @ 0.9" in section
    assert f"- {cell(1)}, seed (cell-level): cka_final" in section
    assert f"- {cell(1)}, seed 1: hessian_final" in section
    assert "| prune magnitude @ 0.9 | 2/3 | 2/3 |" in md  # counted, not shown as zeros
    assert "| cka_final | 0/1 | 1/1 |" in md
    # pool 1 seed 1 has no pruning: those columns use the 2 seeds that have it, and say so
    assert re.search(r"\| RF 181 px \(pool 1\) \| 93\.5 ± 0\.50 \| [0-9.]+ ± [0-9.]+ \(n=2\) \| "
                     r"[0-9.]+ ± [0-9.]+ \(n=2\) \| 3 \|", md)
    images = re.findall(r"<img src='([^']+)'", html)
    kinds = {i.split("cifar10-")[1][:-4] for i in images}
    assert kinds == {"pruning-magnitude", "prunability-magnitude", "hessian-eigenvalues",
                     "hessian-density", "cka-final", "importance", "receptive-field"}
    for img in images:
        assert (tmp_path / "rep" / img).stat().st_size > 1000
        assert (tmp_path / "rep" / img.replace(".png", ".pdf")).is_file()
    assert md.count("![") == len(images)
    for ext in ("md", "tex", "csv"):
        name = f"vgg19-w1-cifar10-pruned_magnitude_0.9.{ext}"
        assert (tmp_path / "rep" / "tables" / name).is_file()
    assert "## Failed or damaged stage units\n\n- " in md
    assert "**Published values (the paper, not computed here): vgg19 on cifar10**" in md
    assert f"- {cell(1)}/seed=0: hessian_final: RuntimeError: boom" in md


def test_report_cli_on_a_results_root(tmp_path, capsys):
    df = to_frame(synthetic_rows(seeds=(0, 1)))
    df = df[df["stage"].isin(["train", "prune", "importance_init", "receptive_field"])]
    for (run_id, stage), g in df.groupby(["run_id", "stage"]):
        run_dir = tmp_path / (run_id if "/seed=" in run_id else f"{run_id}/cell")
        arrays = ({"mean_map": np.eye(5), "maxima": np.ones(3)}
                  if stage == "importance_init" else None)
        recs = [{k: v for k, v in r.items() if v is not None and v == v and v is not pd.NA}
                for r in g.astype(object).to_dict("records")]
        results.write_stage(run_dir, stage, recs, arrays=arrays)
    (tmp_path / cell(2) / "seed=1" / "stages" / "prune" / "DONE").unlink()
    assert report_main([str(tmp_path)]) == 0
    assert "report.md" in capsys.readouterr().out
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"- {cell(2)}, seed 1: prune magnitude @ 0.9" in md
    assert "figures/vgg19-w1-cifar10-importance.png" in md
    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "nope")])
    # the Hydra commands' spelling of the folder is taken too
    assert report_main([f"results_root={tmp_path}", "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_text() == md


def test_a_long_figure_title_is_wrapped_to_the_figure_width(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    from analysis.plots import _figure, _suptitle
    from analysis.report import save_figure

    fig, _ = _figure(1, 1)
    g = to_frame(synthetic_rows(seeds=(0,)))
    _suptitle(fig, g, "a caption far longer than one 3.8-inch panel can hold on one line "
                      "(mean over seeds; rows: at initialisation / after training; own scale)")
    renderer = FigureCanvasAgg(fig).get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # nothing cut off at the edges
    lines = fig._suptitle.get_text().split("\n")
    assert len(lines) >= 3
    # as few lines as fit: the next line's first word would not fit on the line before it
    font = fig._suptitle.get_fontproperties()
    width = [RendererAgg(1, 1, 72).get_text_width_height_descent(t, font, ismath=False)[0]
             for t in (f"{a} {b.split()[0]}" for a, b in zip(lines[1:-1], lines[2:]))]
    assert min(width) > 0.95 * fig.get_figwidth() * 72
    draws = []
    real = fig.draw
    fig.draw = lambda renderer: draws.append(renderer) or real(renderer)
    save_figure(fig, tmp_path, "long")
    assert {p.name for p in tmp_path.iterdir()} == {"long.png", "long.pdf"}
    # the PNG: the layout pass and the drawing; the PDF: the drawing only, on that layout
    assert len(draws) == 3
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)  # restored


def test_caveats_name_diverged_runs_and_barely_moved_batchnorm_statistics(tmp_path):
    from analysis.report import STALE_BN_SHARE, caveat_blocks
    from landscape.train import STALE_SHARE

    assert STALE_BN_SHARE == STALE_SHARE  # the report flags what the train stage warns about
    base = {"arch": "small_cnn", "dataset": "digits", "pool_level": 1, "stage": "train"}
    rows = [{**base, "run_id": "a/seed=0", "seed": 0, "metric": "diverged", "value": 1.0,
             "index": 3},
            {**base, "run_id": "a/seed=1", "seed": 1, "metric": "diverged", "value": 0.0},
            {**base, "run_id": "a/seed=1", "seed": 1, "metric": "bn_initial_share",
             "value": 0.9 ** 4, "layer": "features.2",
             "note": "(1 - momentum)^steps: momentum=0.1, steps=4; the largest over BatchNorm "
                     "layers"},
            {**base, "run_id": "a/seed=2", "seed": 2, "metric": "bn_initial_share",
             "value": 0.9 ** 60, "layer": "features.2", "note": "momentum=0.1, steps=60"}]
    blocks = caveat_blocks(to_frame(rows))
    assert blocks[0] == ("h2", "Caveats")
    assert blocks[-1] == ("list", [
        "a/seed=0: training diverged (non-finite loss) at epoch 3",
        "a/seed=1: BatchNorm features.2 still holds 65.6% of its initial running statistics "
        "(momentum=0.1, steps=4)"])  # 0.9^60 = 0.2% is below 5%: not listed
    assert caveat_blocks(to_frame(rows[1:2])) == []
