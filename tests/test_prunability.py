"""What goes with prunability: the rank correlation within strata (against a brute-force
oracle, closed forms and Spearman's rho for one stratum) and the report's table on the
synthetic grid, worked by hand."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from analysis.prunability import (highest_rates, procedure_units, prunability_scatter,
                                  prunability_table)
from analysis.report import _units
from analysis.stats import (PERMUTATIONS, grid_frame, rank_correlation, select,
                            stratified_correlation, within_rank_correlation)
from landscape.results import to_frame
from test_analysis import synthetic_rows


def _oracle(x, y, strata):
    """Within-stratum rho and its exact two-sided permutation p (twice the smaller tail), by
    loops over every permutation."""
    groups = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)

    def centred(values, idx):
        r = stats.rankdata([values[i] for i in idx])
        return r - r.mean()

    def rho(yy):
        num = den_x = den_y = 0.0
        for idx in groups.values():
            cx, cy = centred(x, idx), centred(yy, idx)
            num, den_x, den_y = num + cx @ cy, den_x + cx @ cx, den_y + cy @ cy
        return num / math.sqrt(den_x * den_y)

    observed = rho(list(y))
    above = below = total = 0
    for choice in itertools.product(*(itertools.permutations(idx) for idx in groups.values())):
        yy = list(y)
        for idx, perm in zip(groups.values(), choice):
            for i, j in zip(idx, perm):
                yy[i] = y[j]
        total += 1
        above += rho(yy) >= observed - 1e-12
        below += rho(yy) <= observed + 1e-12
    return observed, min(1.0, 2 * min(above, below) / total)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_the_within_correlation_is_the_brute_force_one(data, sizes):
    n = sum(sizes)
    x = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="x")  # ties
    y = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="y")
    strata = [k for k, size in enumerate(sizes) for _ in range(size)]
    rho, p = within_rank_correlation(x, y, strata)
    centred = [np.ptp(x[i:i + s]) > 0 and np.ptp(y[i:i + s]) > 0
               for i, s in zip(np.cumsum([0, *sizes[:-1]]), sizes)]
    if not any(centred):  # neither varies within any stratum with the other: undefined
        assert math.isnan(rho) or rho == 0
        return
    want_rho, want_p = _oracle(x, y, strata)
    assert rho == pytest.approx(want_rho, abs=1e-12) and p == pytest.approx(want_p, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(values=st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5)), min_size=3, max_size=7))
def test_one_stratum_is_spearmans_rho_with_the_same_exact_p(values):
    x, y = map(np.array, zip(*values))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return
    rho, p = within_rank_correlation(x, y, ["one"] * len(x))
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    pooled = rank_correlation(pd.DataFrame({"x": x, "value": y}), x="x")
    if abs(rho) > 1e-9:  # at rho = 0 scipy's rho of 1e-17 (rounding) splits the tied nulls
        assert p == pytest.approx(pooled.p, abs=1e-12)


def test_a_relation_within_strata_that_pooling_reverses():
    """Simpson: y rises with x in each stratum, the strata's offsets make it fall overall."""
    x = [1, 2, 3, 11, 12, 13, 21, 22, 23, 24]
    y = [31, 32, 33, 21, 22, 23, 11, 12, 13, 14]
    strata = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    rho, p = within_rank_correlation(x, y, strata)
    # only the identity and the reversal of every stratum reach |rho| = 1
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / (6 * 6 * 24))
    assert stats.spearmanr(x, y).statistic < -0.5


def test_many_strata_take_seeded_random_permutations():
    x = np.arange(25.0)
    strata = np.repeat(np.arange(5), 5)
    rho, p = within_rank_correlation(x, x ** 3, strata)  # 120^5 permutations: sampled
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / (1 + PERMUTATIONS))
    noise = np.random.default_rng(1).normal(size=25)
    first = within_rank_correlation(x, noise, strata)
    assert first == within_rank_correlation(x, noise, strata) and 0 < first[1] <= 1


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="same length"):
        within_rank_correlation([1, 2, 3], [1, 2], [0, 0, 0])
    with pytest.raises(ValueError, match="no NaN"):
        within_rank_correlation([1, 2, np.nan], [1, 2, 3], [0, 0, 0])
    with pytest.raises(ValueError, match="no NaN"):
        within_rank_correlation([1, 2, 3], [1, 2, 3], [0, None, 0])


def test_runs_are_joined_and_runs_without_a_value_left_out():
    x = pd.DataFrame({"run_id": list("abcde"), "cell": [1, 1, 1, 2, 2],
                      "value": [1.0, 2.0, 3.0, 4.0, np.nan]})
    y = pd.DataFrame({"run_id": list("edcba"), "value": [9.0, 8.0, 7.0, 6.0, 5.0]})
    r = stratified_correlation(x, y)  # y: a 5, b 6, c 7, d 8 (e has no x)
    assert (r.n, r.strata) == (4, 2) and r.rho == pytest.approx(1.0)
    assert r.rho_within == pytest.approx(1.0) and r.p_within == pytest.approx(2 / 6)
    few = stratified_correlation(x.iloc[:2], y)
    assert few.n == 2 and math.isnan(few.rho) and math.isnan(few.p_within)
    with pytest.raises(ValueError, match="two values for run a"):
        stratified_correlation(pd.concat([x, x.iloc[:1]]), y)


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)),
                       min_size=3, max_size=9))
def test_the_rhos_without_tests_are_the_tested_ones(values):
    x, y, cells = zip(*values)
    runs = [str(i) for i in range(len(values))]
    a = pd.DataFrame({"run_id": runs, "cell": cells, "value": np.array(x, float)})
    b = pd.DataFrame({"run_id": runs, "value": np.array(y, float)})
    tested, quick = stratified_correlation(a, b), stratified_correlation(a, b, test=False)
    for field in ("rho", "rho_within"):
        want, got = getattr(tested, field), getattr(quick, field)
        assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, abs=1e-12)
    assert math.isnan(quick.p) and math.isnan(quick.p_within)


def test_the_prunability_table_of_the_synthetic_grid():
    """lambda_max of hessian_final is 10 * level + seed; the accuracy magnitude pruning at 0.9
    costs is dense - pruned: level 1 0.83, 0.815, 0.85; level 2 0.61, 0.412, 0.705 (by seed).
    Over all runs rho = 1 - 6 * 58 / 210; within each level both rank seeds (2, 1, 3) vs
    (1, 2, 3): rho 2 / 4, and |rho| >= 1/2 in 18 of the 36 within-level permutations."""
    g = grid_frame(to_frame(synthetic_rows()))
    units = _units(select(g, stage=["prune", "finetune"]))
    assert highest_rates(units)["unit"].tolist() == ["prune magnitude @ 0.9",
                                                     "finetune magnitude @ 0.9"]
    t = prunability_table(g, units)
    assert t.name == "vgg19-w1-cifar10-prunability"
    named = prunability_table(g, units, name="magnitude", what="criterion magnitude")
    assert named.name == "vgg19-w1-cifar10-prunability-magnitude"
    assert named.title.endswith("what goes with the accuracy pruning costs, criterion magnitude")
    num = t.numbers.set_index(["quantity", "pruning", "scope"])
    key = ("hessian_final: λ_max", "prune magnitude @ 0.9: dense - pruned")
    assert num.loc[(*key, "all runs"), "rho"] == pytest.approx(1 - 6 * 58 / 210)
    assert num.loc[(*key, "all runs"), "n"] == 6
    assert num.loc[(*key, "within cells"), "rho"] == pytest.approx(0.5)
    assert num.loc[(*key, "within cells"), "p"] == pytest.approx(0.5)
    assert num.loc[(*key, "within cells"), "cells"] == 2
    assert np.allclose(num["p_holm"].dropna(), np.minimum(1, num["p_holm"].dropna()))
    assert (num["p_holm"].dropna() >= num["p"].dropna()).all()
    # importance_max is 0.1 * level: constant within each level
    imp = num.loc[("importance_init: importance_max", key[1], "within cells")]
    assert math.isnan(imp["rho"])
    cells = t.cells.set_index(["Quantity (per run)", "Runs"])
    assert cells.loc[("importance_init: importance_max", "within cells"), key[1]] == \
        "undefined (constant; n=6)"
    assert re.fullmatch(r"\+0\.50 \(p=[0-9.]+; n=6\)", cells.loc[(key[0], "within cells"), key[1]])
    assert list(t.cells.columns[2:]) == ["prune magnitude @ 0.9: dense - pruned",
                                         "finetune magnitude @ 0.9: dense - fine-tuned"]
    assert "Holm-adjusted over the table's" in t.notes
    assert t.cells["Quantity (per run)"].iloc[0] == "dense test acc. (reference)"
    dense = num.loc[("dense test acc. (reference)", key[1], "all runs")]
    assert dense["rho"] == pytest.approx(stats.spearmanr(
        [0.93, 0.935, 0.94, 0.91, 0.912, 0.905], [0.83, 0.815, 0.85, 0.61, 0.412, 0.705])
        .statistic)


def test_the_scatter_has_a_panel_per_quantity_with_both_rhos():
    g = grid_frame(to_frame(synthetic_rows()))
    fig = prunability_scatter(g, criterion="magnitude")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 3  # lambda_max at init and final, importance_max (no trace rows)
    assert "hessian_final: λ_max\nρ -0.66 all runs, +0.50 within cells" in titles
    lam = next(ax for ax in fig.axes if ax.get_title().startswith("hessian_final: λ_max"))
    points = np.concatenate([c.get_offsets() for c in lam.collections])
    assert sorted(points[:, 1].round(1)) == [41.2, 61.0, 70.5, 81.5, 83.0, 85.0]  # points
    assert prunability_scatter(g, criterion="obd") is None


def test_no_table_without_pruning_or_quantities():
    g = grid_frame(to_frame(synthetic_rows()))
    assert prunability_table(g, _units(select(g, stage=["nothing"]))) is None
    plain = g[~g["stage"].str.startswith(("hessian", "importance"))]
    assert prunability_table(plain, _units(select(plain, stage=["prune", "finetune"]))) is None


def test_the_units_of_one_procedure():
    cols = ["stage", "criterion", "prune_rate", "finetuned", "protocol", "prune_settings",
            "finetune_settings", "unit"]
    units = pd.DataFrame([
        ("prune", "magnitude", 0.5, False, "default", "", None, "a"),
        ("finetune", "magnitude", 0.5, True, "default", "", "finetune_lr=0.01", "b"),
        ("finetune", "magnitude", 0.5, True, "default", "", "finetune_lr=0.001", "c"),
        ("prune", "obd", 0.9, False, "default", "", "", "d"),
        ("prune", "magnitude", 0.9, False, "paper", "", "", "e"),
        ("prune", "magnitude", 0.9, False, "default", "", "", "f")], columns=cols)
    proc = {"criterion": "magnitude", "protocol": "default", "prune_settings": None,
            "finetune_settings": "finetune_lr=0.01"}
    assert procedure_units(units, proc)["unit"].tolist() == ["a", "b", "f"]
    assert highest_rates(procedure_units(units, proc))["unit"].tolist() == ["f", "b"]
