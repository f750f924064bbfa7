"""``experiment=dynamics_small`` end to end (reduced): saved epochs, trackers, CKA to final,
the ERF during training and IMP, and their report figures per RF level (issue 28)."""

from __future__ import annotations

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
    c = df[df["metric"] == "cka_to_final"]
    assert sorted(c["epoch"].dropna().unique()) == [0, 2, 4]
    imp = df[(df["stage"] == "imp") & (df["metric"] == "sparsity")]
    assert imp["value"].round(3).tolist() == [0.5, 0.5]
    figures = root / "report" / "figures"
    for name in ("lambda-trajectory", "saturation-trajectory", "cka-to-final",
                 "erf-trajectory", "layer-erf"):
        assert list(figures.glob(f"*-{name}.png")), name
    assert "Iterative magnitude pruning" in (root / "report" / "report.md").read_text()
    fig = dynamics_plots.cka_to_final_trajectory(df)
    assert len([a for a in fig.axes if a.get_lines()]) == 2  # one panel per pool level
