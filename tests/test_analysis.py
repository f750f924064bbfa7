"""analysis.stats / tables / plots on synthetic DataFrames with known values."""

import math

import matplotlib.colors
import matplotlib.container
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from analysis import plots
from analysis.stats import (cohens_d, compare_levels, final_epoch, hedges_g, holm,
                            pruning_observations, rank_correlation, summarize, summarize_cells,
                            shared_note, welch_test, with_cell)
from analysis.paper import paper_table
from analysis.tables import (format_mean_std, format_number, latex_escape, pruning_table,
                             pvalue_table, to_latex, to_markdown, training_table)
from landscape.results import to_frame

T_975 = {2: 4.302652729911275, 3: 3.182446305284263}  # Student t quantiles (printed tables)
LEVELS = {1: 181, 2: 359}
DENSE = {1: [0.93, 0.935, 0.94], 2: [0.91, 0.912, 0.905]}
PRUNED = {1: [0.10, 0.12, 0.09], 2: [0.30, 0.50, 0.20]}
FINETUNED = {1: [0.80, 0.82, 0.81], 2: [0.90, 0.90, 0.89]}


def cell(level: int) -> str:
    return f"vgg19-w1-cifar10-pool{level}-{level:010d}"


def synthetic_rows(seeds=(0, 1, 2)) -> list[dict]:
    rows = []
    for level, rf in LEVELS.items():
        ident = {"arch": "vgg19", "dataset": "cifar10", "pool_level": level, "pool_kernel": 2,
                 "pool_stride": 1, "pool_padding": 0, "receptive_field": rf, "width": 1.0}
        for layer, (r_max, border) in {"features.0": (3, 0), "features.1": (3 + level, 0),
                                       "features.3": (5 + 2 * level, 1)}.items():
            rows += [{**ident, "run_id": cell(level), "stage": "receptive_field", "layer": layer,
                      "metric": m, "value": v}
                     for m, v in (("rf_r_max", r_max), ("rf_border", border))]
        for s in seeds:
            run = {**ident, "run_id": f"{cell(level)}/seed={s}", "seed": s}
            rows += [{**run, "stage": "train", "metric": "test_acc", "index": 1, "value": 0.5},
                     {**run, "stage": "train", "metric": "test_acc", "index": 2,
                      "value": DENSE[level][s]},
                     {**run, "stage": "train", "metric": "train_loss", "index": 2, "value": 0.1},
                     {**run, "stage": "train", "metric": "diverged", "value": 0}]
            unit = {"criterion": "magnitude", "prune_rate": 0.9}
            rows += [{**run, **unit, "stage": "prune", "finetuned": False, "metric": "test_acc",
                      "value": PRUNED[level][s]},
                     {**run, **unit, "stage": "finetune", "finetuned": True, "metric": "test_acc",
                      "value": FINETUNED[level][s]},
                     {**run, **unit, "stage": "finetune", "finetuned": True, "index": 1,
                      "metric": "train_acc", "value": 0.7}]
            for stage, scale in (("hessian_init", 1.0), ("hessian_final", 10.0)):
                rows += [{**run, "stage": stage, "metric": "hessian_eigenvalue", "index": k,
                          "value": scale * level / k + s} for k in (1, 2, 3)]
                rows += [{**run, "stage": stage, "metric": "hessian_density_node", "index": i,
                          "value": v} for i, v in enumerate([-0.1, 0.0, scale * level])]
                rows += [{**run, "stage": stage, "metric": "hessian_density_weight", "index": i,
                          "value": w} for i, w in enumerate([0.2, 0.7, 0.1])]
            rows.append({**run, "stage": "importance_init", "metric": "importance_max",
                         "layer": "features.3", "value": 0.1 * level})
        for a in seeds:  # CKA stored for a <= b, as the pipeline does
            for b in seeds:
                if a <= b:
                    rows += [{**ident, "run_id": cell(level), "stage": "cka_final", "seed": a,
                              "seed_b": b, "layer": la, "layer_b": lb, "metric": "cka",
                              "value": 1.0 if (la == lb and a == b) else 0.5}
                             for la in ("c0", "c1", "c2") for lb in ("c0", "c1", "c2")]
    return rows


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return to_frame(synthetic_rows())


# ---------------------------------------------------------------------------------------------
def test_summarize_matches_hand_computation():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(5 / 3)
    assert (s.mean, s.n) == (2.5, 4) and s.std == pytest.approx(std)
    assert s.ci_high - s.mean == pytest.approx(T_975[3] * std / 2)
    assert s.mean - s.ci_low == pytest.approx(T_975[3] * std / 2)
    one = summarize([7.0])
    assert one.n == 1 and math.isnan(one.std) and math.isnan(one.ci_low)
    with pytest.raises(ValueError, match="confidence"):
        summarize([1.0, 2.0], confidence=1.5)


def test_summarize_cells_uses_final_epoch_and_hand_values(df):
    s = summarize_cells(df, metrics=["test_acc"])
    dense = s[s["stage"] == "train"].set_index("pool_level")
    for level, values in DENSE.items():
        row = dense.loc[level]
        assert row["mean"] == pytest.approx(np.mean(values))  # epoch 2, not epoch 1 (0.5)
        assert row["std"] == pytest.approx(np.std(values, ddof=1))
        assert row["n"] == 3
        half = T_975[2] * np.std(values, ddof=1) / math.sqrt(3)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((np.mean(values) - half,
                                                                 np.mean(values) + half))
    ft = s[(s["stage"] == "finetune")].set_index("pool_level")
    assert ft.loc[2, "mean"] == pytest.approx(np.mean(FINETUNED[2]))
    # eigenvalues are summarised per rank
    eig = summarize_cells(df, metrics=["hessian_eigenvalue"])
    assert len(eig) == 2 * 2 * 3
    assert "cka" not in set(summarize_cells(df)["metric"])


def test_summarize_cells_refuses_two_rows_of_one_seed(df):
    with pytest.raises(ValueError, match="several rows per seed"):
        summarize_cells(df, metrics=["hessian_eigenvalue"],
                        by=["cell", "stage", "metric"])


def test_final_epoch_keeps_last_index_only(df):
    f = final_epoch(df)
    acc = f[(f["stage"] == "train") & (f["metric"] == "test_acc")]
    assert len(acc) == 6 and set(acc["index"]) == {2}
    eig = df["metric"] == "hessian_eigenvalue"
    assert (f["metric"] == "hessian_eigenvalue").sum() == eig.sum()


def test_welch_matches_scipy_and_hand_formula():
    a, b = np.array([93.0, 93.5, 94.2, 92.9]), np.array([91.1, 90.2, 91.9])
    w = welch_test(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert (w.t, w.p) == pytest.approx((ref.statistic, ref.pvalue))
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    assert w.t == pytest.approx((a.mean() - b.mean()) / math.sqrt(va + vb))
    assert w.dof == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2))
    with pytest.raises(ValueError, match=">= 2 values"):
        welch_test([1.0], [1.0, 2.0])
    assert math.isnan(welch_test([0.93 - 0.8, 0.13], [0.2, 0.2]).p)  # both constant


def test_effect_sizes_by_hand():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    assert cohens_d(a, b) == pytest.approx(-3.0)  # pooled std 1
    j = 1.0 / (math.sqrt(2.0) * math.gamma(1.5))  # Gamma(2) / (sqrt(2) Gamma(3/2)), m = 4
    assert hedges_g(a, b) == pytest.approx(-3.0 * j)
    assert j == pytest.approx(1 - 3 / (4 * 4 - 1), abs=3e-3)


def test_holm_hand_example():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([np.nan, 0.2, 0.6])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.4, 0.6])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_properties(p):
    adj, p = holm(p), np.asarray(p)
    assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)  # monotone in the raw p-values
    assert adj.min() == pytest.approx(min(1.0, p.min() * p.size))


def test_pruning_observations_pair_per_seed_and_keep_missing_as_nan(df):
    obs = pruning_observations(df, criterion="magnitude", prune_rate=0.9)
    lv1 = obs[obs["pool_level"] == 1].sort_values("seed")
    assert lv1["difference"].to_numpy() == pytest.approx(np.subtract(DENSE[1], PRUNED[1]))
    partial = df[~((df["stage"] == "prune") & (df["seed"] == 2))]
    obs = pruning_observations(partial, criterion="magnitude", prune_rate=0.9)
    assert obs["pruned"].isna().sum() == 2 and obs["dense"].notna().all()
    assert obs["difference"].isna().sum() == 2


def test_compare_levels_and_rank_correlation(df):
    obs = pruning_observations(df, criterion="magnitude", prune_rate=0.9)
    cmp = compare_levels(obs, value="pruned")
    assert len(cmp) == 1 and (cmp["level_a"].iloc[0], cmp["level_b"].iloc[0]) == (181, 359)
    ref = sps.ttest_ind(PRUNED[1], PRUNED[2], equal_var=False)
    assert cmp["p"].iloc[0] == pytest.approx(ref.pvalue)
    assert cmp["p_holm"].iloc[0] == pytest.approx(ref.pvalue)  # one comparison: unchanged
    assert cmp["hedges_g"].iloc[0] == pytest.approx(hedges_g(PRUNED[1], PRUNED[2]))
    three = pd.DataFrame({"receptive_field": np.repeat([1, 2, 3], 3), "seed": [0, 1, 2] * 3,
                          "value": [1.0, 1.2, 0.9, 2.0, 2.5, 2.2, 2.1, 2.3, 2.0]})
    cmp3 = compare_levels(three)
    assert len(cmp3) == 3 and cmp3["p_holm"].to_numpy() == pytest.approx(holm(cmp3["p"]))
    assert len(compare_levels(three, pairs="adjacent")) == 2
    with pytest.raises(ValueError, match="several rows"):
        compare_levels(pd.concat([three, three]))
    r = rank_correlation(three)
    ref = sps.spearmanr(three["receptive_field"], three["value"])
    exact = _exact_spearman_p(three["receptive_field"], three["value"])
    assert r.rho == pytest.approx(ref.statistic) and r.n == 9  # 9! pairings: sampled
    assert abs(r.p - exact) < 4 * math.sqrt(exact * (1 - exact) / 50_000) + 2e-5


def _exact_spearman_p(x, y) -> float:
    """Two-sided p of Spearman's rho over every pairing of the values with the levels."""
    import itertools

    rx, ry = sps.rankdata(x), sps.rankdata(y)
    perms = np.array(list(itertools.permutations(ry)))
    cx, cp = rx - rx.mean(), perms - perms.mean(axis=1, keepdims=True)
    rhos = cp @ cx / (np.linalg.norm(cp, axis=1) * np.linalg.norm(cx))
    observed = np.corrcoef(rx, ry)[0, 1]
    return float(np.mean(np.abs(rhos) >= abs(observed) - 1e-12))


@pytest.mark.parametrize("x, y", [
    ([110, 213, 318], [3.0, 2.0, 1.0]),  # rho = -1 on 3 points: p = 2/6, not 0
    ([110, 110, 213, 213], [0.9, 0.8, 0.2, 0.1]),  # two levels: 8 of 24 pairings as extreme
    ([1, 2, 3, 4, 5, 6, 7], [2.0, 1.0, 4.0, 3.0, 7.0, 5.0, 6.0]),
    ([1, 1, 2, 2, 3, 3, 4, 4], [0.1, 0.5, 0.2, 0.9, 0.7, 0.4, 0.8, 0.6])])
def test_rank_correlation_p_is_the_exact_permutation_p_for_few_seeds(x, y):
    r = rank_correlation(pd.DataFrame({"receptive_field": x, "value": y}))
    assert r.rho == pytest.approx(sps.spearmanr(x, y).statistic)
    assert r.p == pytest.approx(_exact_spearman_p(x, y), rel=1e-9)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mean, std, text", [
    (93.5, 0.11, "93.5 ± 0.11"), (82.6, 2.02, "82.6 ± 2.02"), (0.07, 0.04, "0.07 ± 0.04"),
    (87.6, 0.3, "87.6 ± 0.30"), (56.04, 20.71, "56.0 ± 20.7"), (99.96, 1.234, "100 ± 1.23"),
    (1.24e-5, 2.14e-6, "1.24e-05 ± 2.14e-06"), (float("nan"), 1.0, "missing")])
def test_format_mean_std_follows_the_papers_style(mean, std, text):
    assert format_mean_std(mean, std) == text


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda x: x != 0),
       st.integers(min_value=0, max_value=4))
def test_a_formatted_number_is_never_zero_and_within_its_last_digit(x, max_decimals):
    """No non-zero number prints as zero or with the other sign, and the printed number is
    the value rounded at its last printed digit (fixed or scientific)."""
    text = format_number(x, max_decimals=max_decimals)
    shown = float(text)
    assert shown != 0 and (shown > 0) == (x > 0), text
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    step = 10.0 ** (-decimals + (int(exponent) if exponent else 0))
    assert abs(shown - x) <= 0.5 * step * (1 + 1e-9), text
    assert format_number(x, max_decimals=max_decimals) == text


def test_a_number_at_exactly_half_the_last_place_is_not_printed_as_zero():
    # found by the property test above: 0.5 with no decimals printed "0" (half to even)
    assert format_number(0.5, max_decimals=0) == "5.00e-01"
    assert format_number(-0.5, max_decimals=0) == "-5.00e-01"
    assert format_number(1.5, max_decimals=0) == "2"


def test_a_number_rounded_up_at_the_decimal_cap_keeps_its_decimals():
    # 0.0063 with 2 decimals is 0.01 (it printed "0.0" before); 99.96 with 3 figures is 100
    assert [format_number(x) for x in (0.0063, 0.0051, 0.0099, 99.96, 9.996, 0.09996)] == [
        "0.01", "0.01", "0.01", "100", "10.0", "0.10"]
    assert format_mean_std(0.0063, 0.00222) == "0.01 ± 2.22e-03"


def test_format_without_std_and_zero():
    assert format_mean_std(93.5, float("nan"), 1) == "93.5 (n=1)"
    assert format_mean_std(1.0, 2.0, 0) == "missing"
    assert format_number(0.0) == "0.00"


def test_pruning_table_layout_and_values(df):
    t = pruning_table(df, criterion="magnitude", prune_rate=0.9)
    assert t.cells.shape == (2, 5)
    assert list(t.cells.columns) == ["Receptive field", "Dense acc. (%)", "Pruned acc. (%)",
                                     "Difference (pp)", "Seeds"]
    row = t.cells.iloc[0]
    assert row["Receptive field"] == "RF 181 px (pool 1)"
    assert row["Dense acc. (%)"] == "93.5 ± 0.50"  # 93, 93.5, 94
    assert row["Pruned acc. (%)"] == format_mean_std(np.mean(PRUNED[1]) * 100,
                                                     np.std(PRUNED[1], ddof=1) * 100)
    diff = np.subtract(DENSE[2], PRUNED[2]) * 100
    assert t.cells.iloc[1]["Difference (pp)"] == format_mean_std(diff.mean(), diff.std(ddof=1))
    ft = pruning_table(df, prune_rate=0.9, finetuned=True)
    assert "Fine-tuned acc. (%)" in ft.cells.columns
    assert ft.numbers["pruned_mean"].to_numpy() == pytest.approx(
        [np.mean(FINETUNED[1]) * 100, np.mean(FINETUNED[2]) * 100])
    with pytest.raises(ValueError, match="no prune results"):
        pruning_table(df, prune_rate=0.5)
    with pytest.raises(ValueError, match="no grid matches"):
        pruning_table(df, arch="resnet50")


def test_training_table_orders_by_receptive_field(df):
    t = training_table(df.iloc[::-1])
    assert t.cells["Receptive field"].tolist() == ["RF 181 px (pool 1)", "RF 359 px (pool 2)"]
    assert t.cells.iloc[0].tolist()[1:] == ["93.5 ± 0.50", "0.10 ± 0.00", "0/3"]


def test_pvalue_table_is_symmetric_with_scipy_values(df):
    t = pvalue_table(df, prune_rate=0.9, quantity="difference")
    assert t.cells.shape == (2, 3) and t.cells.iloc[0, 1] == "" and t.cells.iloc[1, 2] == ""
    assert t.cells.iloc[0, 2] == t.cells.iloc[1, 1]
    p = sps.ttest_ind(np.subtract(DENSE[1], PRUNED[1]), np.subtract(DENSE[2], PRUNED[2]),
                      equal_var=False).pvalue
    assert t.numbers["p_holm"].iloc[0] == pytest.approx(p)
    assert t.cells.iloc[0, 2] == f"{p:.2g}"


def reference_frame() -> pd.DataFrame:
    """A made-up frame in the layout of shared/reference/paper_tables.csv."""
    return pd.DataFrame({"table": 1, "arch": "vgg19", "dataset": "cifar10",
                         "receptive_field": [181, 181, 181], "pool_level": 1,
                         "metric": ["dense_test_acc", "pruned_test_acc", "difference"],
                         "mean": [90.0, 10.0, 80.0], "std": [0.1, 2.0, 2.0],
                         "note": ["rate 0.9", None, None]})


def test_paper_table_is_labelled_and_in_the_same_layout():
    t = paper_table(reference_frame(), arch="vgg19", dataset="cifar10")
    assert t.title.startswith("Published values (the paper, not computed here)")
    assert t.cells.iloc[0].tolist() == ["RF 181 px (pool 1)", "90.0 ± 0.10", "10.0 ± 2.00",
                                        "80.0 ± 2.00"]
    assert paper_table(reference_frame(), arch="resnet50", dataset="cifar10") is None


def test_latex_and_markdown_rendering(df):
    assert latex_escape("a_b & 5% $x$ #1 {y} ~^\\") == (
        r"a\_b \& 5\% \$x\$ \#1 \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}")
    t = pruning_table(df.assign(arch="vgg_19"), prune_rate=0.9)
    tex = to_latex(t)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"93.5 $\pm$ 0.50" in tex and r"Dense acc. (\%)" in tex and r"vgg\_19" in tex
    assert "\\label{tab:vgg-19" in tex and tex.count(r" \\") == 3  # header + 2 rows
    md = to_markdown(t).splitlines()
    assert md[2].startswith("| Receptive field |") and md[3].startswith("|:--|")
    assert md[4] == "| RF 181 px (pool 1) | 93.5 ± 0.50 | " + t.cells.iloc[0, 2] + " | " \
        + t.cells.iloc[0, 3] + " | 3 |"


# ---------------------------------------------------------------------------------------------
def _lines(ax):
    return len(ax.get_lines())


def test_hessian_plots_have_one_line_per_rf_and_panel(df):
    fig = plots.hessian_eigenvalues(df)
    axes = fig.get_axes()
    assert len(axes) == 2 and [_lines(a) for a in axes] == [2, 2]
    assert axes[0].get_yscale() == "log"
    ranks = np.concatenate([a.get_xticks() for a in axes])  # ranks 1..3: no 1.5, 2.5
    assert len(ranks) and (ranks == ranks.round()).all()
    mean_top = axes[1].get_lines()[0].get_ydata()[0]  # final, RF 181, rank 1: 10 + seed mean
    assert mean_top == pytest.approx(10.0 + 1.0)
    # k = 1: one tick at rank 1 (not 0.945, 0.96, ...) and the seeds' spread as an error bar
    top = df[(df["metric"] != "hessian_eigenvalue") | (df["index"] == 1)]
    ax = plots.hessian_eigenvalues(top).get_axes()[1]
    lo, hi = ax.get_xlim()
    assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1.0]
    bars = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(bars) == 2  # one per receptive field
    neg = df.assign(value=np.where(df["metric"] == "hessian_eigenvalue", -df["value"], df["value"]))
    assert plots.hessian_eigenvalues(neg).get_axes()[0].get_yscale() == "symlog"
    fig = plots.spectral_density(df)
    assert [_lines(a) for a in fig.get_axes()] == [2, 2]
    # a sigma far below the grid step (the paper's 0.057 over a range of thousands): every
    # node's Gaussian is drawn at its height (the curve's peak as on a fine grid at the nodes)
    wide = with_cell(df.assign(value=np.where(df["metric"] == "hessian_density_node",
                                              df["value"] * 1e4, df["value"])))
    sigma = 0.0566
    ax = plots.spectral_density(wide, sigma=sigma).get_axes()[0]
    drawn = max(line.get_ydata().max() for line in ax.get_lines())
    d = wide[wide["stage"] == "hessian_init"]
    peaks = []
    for _, c in d.groupby("cell"):
        runs = [(r.loc[r["metric"] == "hessian_density_node", "value"].to_numpy(),
                 r.loc[r["metric"] == "hessian_density_weight", "value"].to_numpy())
                for _, r in c.groupby("run_id")]
        fine = np.concatenate([n[:, None] + sigma * np.linspace(-1, 1, 201) for n, _ in runs])
        peaks.append(np.mean([plots.gaussian_density(n, w, fine.ravel(), sigma)
                              for n, w in runs], axis=0).max())
    assert drawn == pytest.approx(max(peaks), rel=0.01)


def test_gaussian_density_integrates_to_one():
    grid = np.linspace(-10, 12, 20001)
    d = plots.gaussian_density(np.array([0.0, 2.0]), np.array([0.3, 0.3]), grid, 0.5)
    assert np.trapezoid(d, grid) == pytest.approx(1.0, abs=1e-6)
    peak = plots.gaussian_density(np.array([1.0]), np.array([2.0]), np.array([1.0]), 0.25)
    assert peak[0] == pytest.approx(1.0 / (0.25 * math.sqrt(2 * math.pi)))
    with pytest.raises(ValueError, match="sigma"):
        plots.gaussian_density(np.zeros(1), np.ones(1), grid, 0.0)


def test_cka_matrix_averages_ordered_pairs():
    rows = to_frame([{"run_id": "c", "stage": "cka_final", "seed": 0, "seed_b": 1, "layer": la,
                      "layer_b": lb, "metric": "cka", "value": v}
                     for (la, lb), v in {("x", "x"): 0.9, ("x", "y"): 0.2, ("y", "x"): 0.6,
                                         ("y", "y"): 0.8}.items()])
    layers, m = plots.cka_matrix(rows)
    assert layers == ["x", "y"]
    assert m == pytest.approx(np.array([[0.9, 0.4], [0.4, 0.8]]))  # (M + M^T) / 2
    assert plots.cka_matrix(rows[rows["seed_b"] == 0])[1] is None


def test_cka_importance_pruning_and_rf_figures(df):
    fig = plots.cka_matrices(df)
    heatmaps = [a for a in fig.get_axes() if a.get_images()]
    assert len(heatmaps) == 2 and all(_lines(a) == 2 for a in heatmaps)  # middle-layer lines
    image = heatmaps[0].get_images()[0]
    assert np.asarray(image.get_array()) == pytest.approx(np.full((3, 3), 0.5))
    assert image.get_clim() == (0.0, 1.0)
    no_pool2 = df[~((df["stage"] == "cka_final") & (df["pool_level"] == 2))]
    fig = plots.cka_matrices(no_pool2)
    assert sum(bool(a.get_images()) for a in fig.get_axes()) == 1
    assert [a.get_title() for a in fig.get_axes() if "missing" in a.get_title()] == [
        "RF 359 px (pool 2)\nmissing"]
    arrays = {"importance_init": {f"{cell(lv)}/seed={s}": {"mean_map": np.full((4, 4), s + lv)}
                                  for lv in LEVELS for s in (0, 1, 2)}}
    fig = plots.importance_maps(df, arrays)
    maps = [a for a in fig.get_axes() if a.get_images()]
    assert len(maps) == 2
    assert np.asarray(maps[0].get_images()[0].get_array()).mean() == pytest.approx(2.0)
    assert "mean max = 0.1 (n=3)" in maps[0].get_title()
    fig = plots.pruning_curves(df)
    assert [_lines(a) for a in fig.get_axes()] == [4, 4]  # curve + dense line per RF
    fig = plots.receptive_field_profile(df, input_size=32)
    (ax,) = fig.get_axes()
    assert _lines(ax) == 3 and ax.get_lines()[-1].get_ydata()[0] == 32


def test_cka_heatmaps_fit_the_figure_below_its_title(df):
    """Labels, titles and colour bar inside the figure and under the suptitle (heatmaps of a
    fixed aspect ratio left the x label cut off at the bottom and the titles on the
    suptitle: the constrained layout placed boxes the images did not fill)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.cka_matrices(df)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    top = fig._suptitle.get_window_extent(renderer).y0
    for ax in fig.get_axes():
        box = ax.get_tightbbox(renderer)
        assert box.y0 >= 0 and box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= top


def test_rf_profile_draws_each_input_size_of_its_cells(df):
    """Cells analysed at different input sizes get a line each (one was drawn, the first
    note's, as if every cell had that size)."""
    rf = df["stage"] == "receptive_field"
    notes = df["pool_level"].map({1: "input_size=16", 2: "input_size=64"})
    (ax,) = plots.receptive_field_profile(df.assign(note=df["note"].mask(rf, notes))).get_axes()
    dotted = [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert dotted == [16, 64] and [t.get_text() for t in ax.texts] == ["16 px", "64 px"]
    assert ax.get_legend().get_texts()[-1].get_text() == "input sizes (16, 64 px)"


def test_importance_maps_of_different_layers_are_not_averaged(df):
    """The default layer (the deepest conv by the RF analysis) can move between the runs of a
    cell's seeds when the analysis changed; their maps are then not averaged."""
    arrays = {"importance_init": {f"{cell(lv)}/seed={s}": {"mean_map": np.full((4, 4), 1.0)}
                                  for lv in LEVELS for s in (0, 1, 2)}}
    moved = (df["stage"] == "importance_init") & (df["run_id"] == f"{cell(1)}/seed=2")
    fig = plots.importance_maps(df.assign(layer=df["layer"].mask(moved, "features.0")), arrays)
    maps = [a for a in fig.get_axes() if a.get_images()]
    assert [m.get_title().split("\n")[0] for m in maps] == ["RF 359 px (pool 2)"]
    (mixed,) = [a for a in fig.get_axes() if "different layers" in a.get_title()]
    assert mixed.get_title().endswith("features.3 (2), features.0 (1)")


def test_importance_colour_bars_state_their_decade_instead_of_an_offset_over_the_title(df):
    arrays = {"importance_init": {f"{cell(lv)}/seed=0": {"mean_map": np.full((4, 4), 3e-7 * lv)}
                                  for lv in LEVELS}}
    fig = plots.importance_maps(df, arrays)
    fig.canvas.draw()
    maps = [a for a in fig.get_axes() if a.get_images()]
    bars = [a for a in fig.get_axes() if a not in maps]
    assert np.asarray(maps[-1].get_images()[0].get_array()).max() == pytest.approx(6.0)
    assert [m.get_title().split("\n")[0] for m in maps] == ["RF 181 px (pool 1)",
                                                             "RF 359 px (pool 2)"]
    assert bars[-1].get_ylabel() == "|∂ out / ∂ pixel| (× 1e-7)"
    assert all(b.yaxis.get_offset_text().get_text() == "" for b in bars)
    assert plots._decade_scaled(np.array([0.5, 2e3]))[1] == 0
    assert plots._decade_scaled(np.array([-4e5]))[1] == 5
    assert plots._decade_scaled(np.zeros(3))[1] == 0


def test_plots_return_none_without_data_and_reject_ambiguous_grids(df):
    train_only = df[df["stage"] == "train"]
    for fn in (plots.hessian_eigenvalues, plots.spectral_density, plots.cka_matrices,
               plots.pruning_curves, plots.receptive_field_profile):
        assert fn(train_only) is None
    assert plots.importance_maps(df, None) is None
    two = pd.concat([df, df.assign(dataset="tiny_imagenet")])
    with pytest.raises(ValueError, match="several grids"):
        plots.hessian_eigenvalues(two)
    assert plots.hessian_eigenvalues(two, dataset="cifar10") is not None


def test_rank_correlation_of_a_constant_is_undefined_not_a_warning():
    import warnings

    from analysis.stats import rank_correlation
    obs = pd.DataFrame({"receptive_field": [10, 20, 30, 40], "value": [0.1, 0.1, 0.1, 0.1]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = rank_correlation(obs)
    assert np.isnan(r.rho) and np.isnan(r.p) and r.n == 4


def test_receptive_field_states_draws_each_level_from_the_stage_rows(df):
    from landscape.receptive_field.drawing import STATE_COLOURS

    assert plots.receptive_field_states(df) is None  # rows written before rf_underutilised
    ident = {"arch": "vgg19", "dataset": "cifar10", "pool_level": 1, "pool_kernel": 2,
             "pool_stride": 1, "pool_padding": 0, "receptive_field": 40, "width": 1.0,
             "run_id": cell(1), "stage": "receptive_field", "note": "input_size=32"}
    layers = {"features.0": (3, 3, 0, 0, 0), "features.3": (20, 40, 0, 0, 0),
              "features.6": (36, 60, 0, 1, 0), "features.9": (40, 80, 1, 1, 1),
              "classifier": (None, None, 1, 0, 0)}  # r_min, r_max, unprod., underut., border
    rows = [{**ident, "layer": name, "metric": m, "value": v}
            for name, vals in layers.items()
            for m, v in zip(("rf_r_min", "rf_r_max", "rf_unproductive", "rf_underutilised",
                             "rf_border"), vals) if v is not None]
    rows.append({**ident, "layer": "features.9", "metric": "rf_min_feasible_input",
                 "value": 40.0})
    rows.append({**ident, "metric": "flops_per_image", "value": 1e6})  # no layer: not a bar
    fig = plots.receptive_field_states(pd.DataFrame(rows))
    (ax,) = [a for a in fig.get_axes() if a.patches]
    colours = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches]
    assert colours == [STATE_COLOURS[s].lower() for s in (
        "productive", "productive", "underutilised", "unproductive", "head")]
    assert [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_linestyle() != "-"] == [32, 40]


def test_a_narrow_log_axis_still_has_tick_labels():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig, axes = plots._figure(1, 1)
    ax = axes[0, 0]
    ax.plot([1, 5], [0.218, 0.257])
    ax.set_yscale("log")
    plots._plain_log_ticks(ax.yaxis)
    FigureCanvasAgg(fig).draw()
    lo, hi = ax.get_ylim()
    axis = ax.yaxis
    labels = [f(v) for f, locs in ((axis.get_minor_formatter(), axis.get_minorticklocs()),
                                   (axis.get_major_formatter(), axis.get_majorticklocs()))
              for v in locs if lo <= v <= hi and f(v)]
    assert len(labels) >= 2  # none before: no decade or mantissa 2/3/5 lies in 0.218..0.257
    ax.set_ylim(1, 500)  # two decades: only mantissas 1, 2, 3, 5 are labelled
    FigureCanvasAgg(fig).draw()
    shown = {float(t.get_text()) for t in ax.get_yticklabels(minor=True) if t.get_text()}
    assert {20.0, 30.0, 50.0} <= shown
    assert all(f"{v:g}".lstrip("0.")[0] in "235" for v in shown)


def test_the_importance_table_pools_seeds_only_over_one_layer():
    """Pooled over every map of every seed when the seeds measured the same layer; a cell whose
    seeds measured different layers (the default layer moved) gets no number."""
    from analysis.paper import importance_table
    from analysis.stats import grid_frame

    rows = []
    for level, layers in ((1, ("features.3", "features.3")), (2, ("features.3", "features.0"))):
        for seed, layer in enumerate(layers):
            run = {"run_id": f"{cell(level)}/seed={seed}", "arch": "vgg19", "dataset": "cifar10",
                   "width": 1.0, "pool_level": level, "pool_kernel": 2, "pool_stride": 1,
                   "pool_padding": 0, "receptive_field": LEVELS[level], "seed": seed,
                   "stage": "importance_init", "layer": layer, "note": "input_size=32"}
            rows += [{**run, "metric": m, "value": v} for m, v in
                     (("importance_max", 1.0 + seed), ("importance_max_std", 0.0),
                      ("importance_n", 2))]
    table = importance_table(grid_frame(to_frame(rows)), None, stage="importance_init",
                             protocol="default")
    ours = table.cells["Ours: mean ± std of the maxima"].tolist()
    assert ours[0] == "1.50 ± 0.500"  # maps 1, 1, 2, 2
    assert ours[1] == "not pooled: the seeds measured features.3, features.0"
    assert table.numbers["n"].tolist() == [4, 0]


def test_a_shared_note_shows_what_differs_between_cells():
    notes = ["checkpoint=final; n_train=256 (no augmentation); input_size=24; C=1.0",
             "checkpoint=final; n_train=256 (no augmentation); input_size=16; C=1.0",
             "checkpoint=final; n_train=256 (no augmentation); input_size=24; C=1.0; extra"]
    assert shared_note(notes, ["a", "b", "a"]) == (
        "checkpoint=final; n_train=256 (no augmentation); input_size=24 / 16 (per cell); C=1.0")
    assert shared_note(notes[:1]) == notes[0] and shared_note([]) == ""
    # without the cells, it is not said where the values differ
    assert "input_size=24 / 16 (differs between rows)" in shared_note(notes)


def test_a_setting_that_differs_between_metrics_of_one_cell_says_which_has_which():
    """The sharpness unit's rho is 0.5 for the adaptive rows and 0.05 for the standard ones
    in every cell: it had been labelled "rho=0.5 / 0.05 (per cell)"."""
    notes = ["checkpoint=final; rho=0.5; steps=5", "checkpoint=final; rho=0.05; steps=5"] * 2
    cells = ["a", "a", "b", "b"]
    metrics = ["adaptive_sharpness", "standard_sharpness"] * 2
    assert shared_note(notes, cells, metrics) == (
        "checkpoint=final; rho=0.5 (adaptive_sharpness) / 0.05 (standard_sharpness); steps=5")
    mixed = shared_note(notes, cells, ["m"] * 4)  # neither one per cell nor one per metric
    assert "rho=0.5 / 0.05 (differs between rows)" in mixed


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), width=st.floats(1.5, 9.0), max_width=st.floats(4.0, 20.0))
def test_panels_wrap_into_rows_no_wider_than_asked(n, width, max_width):
    fig, axes = plots._panels(n, panel=(width, 3.0), max_width=max_width)
    assert len(axes) == n and len(fig.axes) == n  # the last row's spare cells removed
    ncols = len({round(ax.get_position().x0, 6) for ax in axes})
    assert ncols == max(1, min(n, int(max_width // width)))
    assert fig.get_figwidth() <= max(max_width, width) + 1e-9
    assert fig.get_figheight() == pytest.approx(3.0 * -(-n // ncols) + 0.4)
    # reading order: left to right, then down
    pos = [ax.get_subplotspec().get_topmost_subplotspec().rowspan.start * 100
           + ax.get_subplotspec().colspan.start for ax in axes]
    assert pos == sorted(pos)


def test_the_rank_correlation_of_erf_size_says_how_many_sizes_the_image_cut():
    from analysis.report import _correlations
    from analysis.stats import with_cell

    rows = []
    for level, rf in ((0, 9), (1, 18)):
        for seed in (0, 1):
            base = dict(run_id=f"c{level}/seed={seed}", arch="small_cnn", dataset="digits",
                        width=1.0, pool_level=level, pool_kernel=2, pool_stride=level + 1,
                        pool_padding=0, receptive_field=rf, seed=seed, protocol="default")
            rows += [dict(base, stage="train", metric="test_acc", index=1, value=0.5 + seed / 10),
                     dict(base, stage="importance_final", metric="erf_size", value=20.0 + rf),
                     dict(base, stage="importance_final", metric="erf_size_censored",
                          value=float(level == 1 and seed == 1))]
    names = list(_correlations(with_cell(to_frame(rows)), []).cells["Quantity (per seed)"])
    assert "importance_final: erf_size (1 of 4 cut by the image)" in names


def test_a_single_point_of_equal_seeds_draws_its_error_bar():
    """The mean of three seeds at 0.1 rounds above their max: the error bar had a negative
    length, which matplotlib refuses."""
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    piv = pd.DataFrame([[0.1, 0.1, 0.1]], index=[1])
    assert (piv.mean(axis=1) > piv.max(axis=1)).all()  # the rounding this is about
    plots.mean_band(ax, piv, "C0", "o", "level")
    low, high = plots.spread(piv.mean(axis=1), piv.min(axis=1), piv.max(axis=1))
    assert high.tolist() == [0.0] and 0 <= low[0] < 1e-15  # clipped, not negative


def test_criteria_side_by_side_table_and_figure(df):
    from analysis.criteria_plots import criteria_curves, criteria_table

    assert criteria_table(df) is None and criteria_curves(df) is None  # one criterion only
    obd = {1: [0.50, 0.60, 0.70], 2: [0.80, 0.85]}  # seed 2 of level 2 not pruned by obd
    rows = synthetic_rows()
    for level in (1, 2):
        for s, v in enumerate(obd[level]):
            run = {k: v for k, v in next(r for r in rows if r.get("seed") == s and r[
                "pool_level"] == level and r["stage"] == "train").items()
                   if k not in ("stage", "metric", "index", "value")}
            unit = {**run, "criterion": "obd", "prune_rate": 0.9}
            rows += [{**unit, "stage": "prune", "finetuned": False, "metric": "test_acc",
                      "value": v},
                     {**unit, "stage": "finetune", "finetuned": True, "metric": "test_acc",
                      "value": v + 0.1}]
    both = to_frame(rows)
    t = criteria_table(both)
    assert list(t.cells.columns) == ["Receptive field", "Rate", "Dense acc. (%)",
                                     "magnitude (%)", "obd (%)"]
    first, second = t.cells.iloc[0], t.cells.iloc[1]
    assert (first["Receptive field"], first["Rate"]) == ("RF 181 px (pool 1)", "0.9")
    assert first["Dense acc. (%)"] == "93.5 ± 0.50"
    assert first["magnitude (%)"] == format_mean_std(np.mean(PRUNED[1]) * 100,
                                                     np.std(PRUNED[1], ddof=1) * 100)
    assert first["obd (%)"] == format_mean_std(60.0, 10.0)
    assert second["obd (%)"] == format_mean_std(82.5, np.std([80, 85], ddof=1)) + " (n=2)"
    assert t.numbers["obd_n"].tolist() == [3, 2]
    ft = criteria_table(both, finetuned=True)
    assert ft.numbers["obd_mean"].to_numpy() == pytest.approx([70.0, 92.5])
    # each criterion against magnitude, paired by seed: scipy's paired t-test, Holm over both
    from scipy import stats as sps

    from analysis.criteria_plots import criteria_tests
    from analysis.stats import holm

    tt = criteria_tests(both)
    assert list(tt.cells.columns) == ["Receptive field", "Rate", "obd − magnitude (pp)"]
    ref = [sps.ttest_rel(np.array(obd[lv]) * 100, np.array(PRUNED[lv][:len(obd[lv])]) * 100)
           for lv in (1, 2)]
    assert tt.numbers["obd_p"].to_numpy() == pytest.approx([r.pvalue for r in ref])
    assert tt.numbers["obd_p_holm"].to_numpy() == pytest.approx(holm([r.pvalue for r in ref]))
    assert tt.numbers["obd_n"].tolist() == [3, 2]
    diff = (np.array(obd[1]) - np.array(PRUNED[1])) * 100
    assert tt.numbers["obd_diff_mean"][0] == pytest.approx(diff.mean())
    assert tt.cells.iloc[0, 2] == (f"+{format_mean_std(diff.mean(), diff.std(ddof=1))} "
                                   f"(p = {tt.numbers['obd_p_holm'][0]:.2g})")
    assert criteria_tests(both, baseline="nope") is None and criteria_tests(df) is None
    from analysis.criteria_plots import criteria_tables  # both, the observations read once
    one, two = criteria_tables(both)
    assert one.cells.equals(t.cells) and two.cells.equals(tt.cells)
    assert [x.name for x in criteria_tables(df)] == []
    fig = criteria_curves(both)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["RF 181 px (pool 1)", "RF 359 px (pool 2)"]
    styles = sorted(line.get_linestyle() for line in axes[0].lines if len(line.get_xdata()) == 1)
    assert styles == ["-", "-", "--", "--"]  # two criteria, one-shot and fine-tuned
    # another checkpoint pruned by obd (its dense accuracy differs): a dense column each
    rows += [{**r, "metric": "dense_test_acc", "value": 0.1}
             for r in rows if r.get("criterion") == "obd" and r["stage"] == "prune"]
    per = criteria_table(to_frame(rows))
    assert list(per.cells.columns) == ["Receptive field", "Rate", "magnitude: dense (%)",
                                       "magnitude (%)", "obd: dense (%)", "obd (%)"]
    assert per.cells.iloc[0]["obd: dense (%)"] == "10.0 ± 0.00"


def test_paired_test_is_scipys_and_says_nan_where_t_is_undefined():
    from scipy import stats as sps

    from analysis.stats import paired_test

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=6), rng.normal(size=6)
    t = paired_test(a, b)
    ref = sps.ttest_rel(a, b)
    d = a - b
    assert (t.t, t.p, t.dof, t.n) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue),
                                      5.0, 6)
    assert t.t == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(6)))  # the closed form
    a[2] = np.nan  # that pair is dropped
    assert paired_test(a, b).n == 5
    same = paired_test([0.1, 0.1, 0.1], [0.1, 0.1, 0.1])  # both at chance in every seed
    assert np.isnan(same.p) and same.mean == 0.0 and same.n == 3
    assert np.isnan(paired_test([1.0], [0.5]).p) and paired_test([1.0], [0.5]).mean == 0.5
    with pytest.raises(ValueError, match="needs pairs, got 2 and 3 values"):
        paired_test([1, 2], [1, 2, 3])
