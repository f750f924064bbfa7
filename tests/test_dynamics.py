"""``experiment=dynamics_small`` end to end (reduced): saved epochs, trackers, CKA to final,
the ERF during training and IMP, and their report figures per RF level (issue 28)."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import dynamics_plots
from analysis.stats import with_cell
from landscape import results


@pytest.mark.slow
def test_experiment_dynamics_small_runs_end_to_end_and_draws_the_trajectories(tmp_path,
                                                                             console):
    root = tmp_path / "r"
    code, out, err = console(
        "run_main", "experiment=dynamics_small", "seed=0", "train.epochs=4",
        "data.train_subset=96", "data.test_subset=64", "train.track.n_samples=32",
        "cka.n_inputs=64", "importance.n_samples=4", "imp.rounds=1", "num_threads=1",
        f"results_root={root}")
    assert code == 0, err[-3000:]
    df = with_cell(results.load(root))
    lam = df[df["metric"] == "track_lambda_max"]
    assert set(lam["index"]) == {1, 2, 3, 4} and lam["cell"].nunique() == 2
    erf = df[df["metric"] == "erf_size"]
    assert sorted(erf["epoch"].dropna().unique()) == [0, 2, 4]
    # every ERF size has its censoring flag; one wider than the 32 px maps is censored
    cut = df[df["metric"] == "erf_size_censored"].set_index(["run_id", "stage"])["value"]
    sizes = erf.set_index(["run_id", "stage"])["value"]
    assert sorted(cut.index) == sorted(sizes.index) and set(cut) <= {0.0, 1.0}
    assert (cut[sizes.index][sizes.to_numpy() > 32] == 1).all()
    layer = df[df["metric"] == "layer_erf_censored"]
    assert len(layer) == len(df[df["metric"] == "layer_erf_size"]) > 0
    c = df[df["metric"] == "cka_to_final"]
    assert sorted(c["epoch"].dropna().unique()) == [0, 2]  # not 4: final with itself
    imp = df[(df["stage"] == "imp") & (df["metric"] == "sparsity")]
    assert imp["value"].round(3).tolist() == [0.5, 0.5]
    figures = root / "report" / "figures"
    for name in ("lambda-trajectory", "saturation-trajectory", "cka-to-final",
                 "erf-trajectory", "layer-erf"):
        assert list(figures.glob(f"*-{name}.png")), name
    assert "Iterative magnitude pruning" in (root / "report" / "report.md").read_text()
    fig = dynamics_plots.cka_to_final_trajectory(df)
    assert len([a for a in fig.axes if a.get_lines()]) == 2  # one panel per pool level


def test_epoch_axes_have_whole_epochs_only():
    """Checkpoints at epochs 0, 1 and 2 were ticked at 0.25, 0.5, ..."""
    base = dict(arch="resnet18", dataset="digits", width=0.125, pool_kernel=0, pool_stride=1,
                pool_padding=0, pool_level=0, receptive_field=109, run_id="c0/seed=0", seed=0)
    rows = []
    for e, stage in ((0, "init"), (1, "epoch_1"), (2, "final")):
        rows.append(dict(base, stage=f"importance_{stage}", protocol="default",
                         metric="erf_size", epoch=e, value=5.0 + e))
        rows += [dict(base, stage=f"cka_to_final_{stage}", metric="cka_to_final", epoch=e,
                      layer=f"l{i}", value=0.2 * e) for i in range(2)]
    df = with_cell(pd.DataFrame(rows))
    for fig in (dynamics_plots.erf_trajectory(df), dynamics_plots.cka_to_final_trajectory(df)):
        ticks = fig.axes[0].get_xticks()
        assert (ticks == ticks.round()).all()


def test_a_censored_erf_is_drawn_hollow_and_said_so():
    base = dict(arch="resnet18", dataset="digits", width=0.125, pool_kernel=0, pool_stride=1,
                pool_padding=0, pool_level=0, receptive_field=109, run_id="c0/seed=0", seed=0,
                protocol="default")
    rows = []
    for e, stage, cut in ((0, "init", 0.0), (1, "epoch_1", 0.0), (2, "final", 1.0)):
        rows += [dict(base, stage=f"importance_{stage}", metric="erf_size", epoch=e,
                      value=9.0 + 12 * e),
                 dict(base, stage=f"importance_{stage}", metric="erf_size_censored", epoch=e,
                      value=cut)]
    fig = dynamics_plots.erf_trajectory(with_cell(pd.DataFrame(rows)))
    hollow = [ln for ln in fig.axes[0].get_lines() if ln.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [2.0]
    assert list(hollow[0].get_ydata()) == [33.0]
    assert "the image cut the ERF" in fig._suptitle.get_text()
