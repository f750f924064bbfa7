"""``experiment=size_matters_small`` end to end (reduced): sizes and protocols as an axis, the
accuracy-vs-size figure, the resolution stage and the relative per-position probe maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.markers import MarkerStyle

from analysis import plots
from analysis.stats import final_epoch, with_cell
from landscape import results


@pytest.mark.slow
def test_experiment_size_matters_small_runs_end_to_end(tmp_path, console):
    root = tmp_path / "r"
    code, out, err = console(
        "run_main", "experiment=size_matters_small", "model.name=vgg11",
        "input=size16,size24,canvas_32_16", "seed=0", "train.epochs=1",
        "data.train_subset=96", "data.test_subset=80", "probes.n_train=48", "probes.n_test=80",
        "resolution.sizes=[16,32]", "num_threads=1", f"results_root={root}")
    assert code == 0, err[-3000:]
    df = with_cell(results.load(root))
    acc = final_epoch(df[(df["stage"] == "train") & (df["metric"] == "test_acc")])
    assert sorted(zip(acc["image_size"], acc["resize"])) == [
        (16, "direct"), (24, "direct"), (32, "canvas:16")]
    assert set(df.loc[df["metric"] == "position_probe_acc", "layer"]) == {"features.9"}
    res = df[df["metric"] == "resolution_test_acc"]
    assert set(res["index"]) == {16, 32} and res["cell"].nunique() == 3
    fig = plots.size_curves(df)
    ax = fig.axes[0]
    line = [ln for ln in ax.get_lines() if ln.get_label().startswith("pool 0")][0]
    direct = acc[acc["resize"] == "direct"].sort_values("image_size")
    assert list(line.get_xdata()) == [16.0, 24.0]
    assert list(line.get_ydata()) == pytest.approx(list(100 * direct["value"]))
    assert any("canvas:16" in t for t in ax.get_legend_handles_labels()[1])
    figures = root / "report" / "figures"
    for name in ("input-size", "resolution", "probes-final-positions"):
        assert list(figures.glob(f"*-{name}.png")), name
    md = (root / "report" / "report.md").read_text()
    grids = [line for line in md.splitlines() if line.startswith("## vgg11")]
    assert len(grids) == 1  # sizes and protocols are an axis of one grid, not variants


def test_size_curves_need_two_sizes_or_protocols():
    rows = [dict(run_id=f"c/seed={s}", arch="vgg11", dataset="digits", width=0.125,
                 pool_level=0, pool_kernel=0, pool_stride=1, pool_padding=0,
                 receptive_field=40, image_size=16, resize="direct", seed=s, stage="train",
                 metric="test_acc", index=1, value=0.5) for s in (0, 1)]
    assert plots.size_curves(with_cell(pd.DataFrame(rows))) is None


def test_size_curves_give_each_protocol_its_own_marker_at_every_level():
    """Canvas and down-then-up cells at one level were all stars of the level's colour: the
    legend could not tell the protocols apart."""
    runs = [(level, size, resize) for level in (0, 1)
            for size, resize in ((16, "direct"), (24, "direct"), (16, "canvas:16"),
                                 (32, "canvas:32"), (64, "down_up:8"))]
    rows = [dict(run_id=f"c{level}-{size}-{resize}/seed=0", arch="vgg11", dataset="digits",
                 width=0.125, pool_level=level, pool_kernel=0, pool_stride=1, pool_padding=0,
                 receptive_field=40, image_size=size, resize=resize, seed=0, stage="train",
                 metric="test_acc", index=1, value=0.5) for level, size, resize in runs]
    ax = plots.size_curves(with_cell(pd.DataFrame(rows))).axes[0]
    shapes = {m: MarkerStyle(m).get_path().transformed(MarkerStyle(m).get_transform())
              for m in (*plots.MARKERS, *plots.PROTOCOL_MARKERS)}
    drawn = {c.get_label(): next(m for m, p in shapes.items() if np.array_equal(
        p.vertices, c.get_paths()[0].vertices)) for c in ax.collections if "pool" in c.get_label()}
    assert drawn == {f"pool {lv}, {kind}, n=1": m for lv in (0, 1) for kind, m in (
        ("canvas:16", "*"), ("canvas:32", "d"), ("down_up:8", "p"))}
