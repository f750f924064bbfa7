"""The receptive-field design space across architectures and variants: one point per cell
(mean over its seeds, min-max bar; :func:`design_points` has one row per seed), test
accuracy (and pruned accuracy, lambda_max, the share of weights that only multiply padding)
against the minimal feasible input resolution r̃,
coloured by the knob family that changed the receptive field, one row of panels per input
size.

A grid of the report (``analysis.report``) holds the cells of one architecture and variant
that differ only in the RF pool; this figure is the one place where cells of different
architectures and knobs (stem, strides, dilation, skips, depth/width, the pool) are compared,
on the axis they share: r̃, the largest r_min over the layers (``rf_min_feasible_input`` of the
cell's ``receptive_field`` stage, "Receptive Field Refinement"'s quantity). Cells without that
stage fall back to the analytic r_max of the last conv (the ``receptive_field`` column), and
the axis label says so.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import MARKERS, OKABE_ITO, _plain_log_ticks, _styled, spread
from analysis.stats import final_epoch, note_fields, with_cell

# The knobs of ``landscape.models.spec`` grouped into the families a reader compares.
FAMILIES = {"stem": "stem", "stem_kernel": "stem", "stem_stride": "stem",
            "stem_channels": "stem", "stage_strides": "strides", "dilation": "dilation",
            "skips": "skips", "projection": "skips", "depths": "depth/width",
            "widths": "depth/width"}
POOL_ONLY = "pool only"  # the paper's architecture, the RF varied by the pool alone
COLUMNS = ("dataset", "arch", "variant", "family", "cell", "pool_level", "seed", "r_tilde",
           "input_size", "test_acc", "pruned_acc", "lambda_max", "padding_only")


def knob_family(variant: object) -> str:
    """``"stem=imagenet,skips=False"`` -> ``"skips+stem"``: the families of the knobs a
    variant label (``arch_variant``) changes, sorted; :data:`POOL_ONLY` for none."""
    if variant is None or pd.isna(variant) or not str(variant):
        return POOL_ONLY
    knobs = re.findall(r"(?:^|,)\s*([a-z_]+)=", str(variant))
    return "+".join(sorted({FAMILIES.get(k, k) for k in knobs})) or POOL_ONLY


def _cell_facts(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell: r̃ and the input size from its ``receptive_field`` rows, and the share of its
    weights that only multiply padding (NaN without them)."""
    rows = df[(df["metric"] == "rf_min_feasible_input") & df["value"].notna()]
    dead = (df[df["metric"] == "padding_only_share"].drop_duplicates("cell")[["cell", "value"]]
            .rename(columns={"value": "padding_only"}))
    if rows.empty:
        facts = pd.DataFrame(columns=["cell", "r_tilde", "input_size"])
    else:
        size = [float(note_fields(n).get("input_size", "nan")) for n in rows["note"]]
        facts = pd.DataFrame({"cell": rows["cell"].to_numpy(), "r_tilde": rows["value"].to_numpy(),
                              "input_size": size}).drop_duplicates("cell")
    return facts.merge(dead, on="cell", how="outer")


def _per_run(rows: pd.DataFrame, name: str) -> pd.Series:
    """run_id -> the mean ``value`` of ``rows`` (one value per run where the caller chose
    rows that hold one)."""
    return rows.groupby("run_id")["value"].mean().rename(name)


def design_points(df: pd.DataFrame, *, prune_rate: float | None = None) -> pd.DataFrame:
    """One row per run (cell, seed) with :data:`COLUMNS`.

    ``test_acc``: the final epoch's test accuracy; ``pruned_acc``: the test accuracy after
    one-shot pruning at ``prune_rate`` (default: the largest rate every pruned cell has)
    without fine-tuning, by ``magnitude`` where it was run, else by the first criterion in
    alphabetical order (``attrs["criterion"]``; ours, not the paper protocol, and the one
    setting when there is one; NaN where there are several); ``lambda_max``: the top
    Hessian eigenvalue after training (``hessian_final``, our protocol); ``padding_only``: the
    share of the cell's conv and linear weights that only multiply zero padding at its input
    size (``padding_only_share``, :mod:`landscape.receptive_field.padding`). ``r_tilde``: r̃ of the
    cell, or the analytic r_max of the last conv where the cell has no ``receptive_field``
    rows (``r_tilde_source`` in ``attrs`` says which); ``input_size``: the one the RF analysis
    used (its notes), else the rows' ``image_size``.
    """
    df = with_cell(df)
    runs = df[df["run_id"].astype("string").str.contains("/seed=", regex=False).fillna(False)]
    train = final_epoch(runs[(runs["stage"] == "train") & (runs["metric"] == "test_acc")])
    if train.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    base = train.drop_duplicates("run_id").copy()
    variant = (base["arch_variant"] if "arch_variant" in base.columns
               else pd.Series(pd.NA, index=base.index))
    out = pd.DataFrame({
        "run_id": base["run_id"].to_numpy(), "dataset": base["dataset"].to_numpy(),
        "arch": base["arch"].to_numpy(),
        "variant": variant.fillna("").astype(str).to_numpy(),
        "cell": base["cell"].to_numpy(), "pool_level": base["pool_level"].to_numpy(),
        "seed": base["seed"].to_numpy(), "rf_last_conv": base["receptive_field"].to_numpy(),
        "image_size": (base["image_size"].astype(float).to_numpy() if "image_size" in base
                       else np.nan)})
    out["family"] = out["variant"].map(knob_family)
    out = out.merge(_per_run(train, "test_acc"), left_on="run_id", right_index=True, how="left")

    pruned = runs[(runs["stage"] == "prune") & (runs["metric"] == "test_acc")
                  & (runs["protocol"] == "default") & (runs["finetuned"] != True)]  # noqa: E712
    criterion = None
    if not pruned.empty:
        present = sorted(pruned["criterion"].dropna().unique())
        criterion = "magnitude" if "magnitude" in present else present[0]  # the paper's first
        pruned = pruned[pruned["criterion"] == criterion]
        if pruned["prune_settings"].nunique() > 1:
            pruned = pruned.iloc[0:0]  # several settings: no one number per run
    if not pruned.empty:
        rates = pruned.groupby("cell")["prune_rate"].agg(lambda r: set(r.round(6)))
        common = set.intersection(*rates) if len(rates) else set()
        rate = prune_rate if prune_rate is not None else (max(common) if common else None)
        at = pruned[np.isclose(pruned["prune_rate"], rate)] if rate is not None else pruned[:0]
        out = out.merge(_per_run(at, "pruned_acc"), left_on="run_id", right_index=True,
                        how="left")
    else:
        rate = None
        out["pruned_acc"] = np.nan
    top = runs[(runs["stage"] == "hessian_final") & (runs["metric"] == "hessian_eigenvalue")
               & (runs["index"] == 1) & (runs["protocol"] == "default")]
    out = out.merge(_per_run(top, "lambda_max"), left_on="run_id", right_index=True, how="left")

    facts = _cell_facts(df)
    out = out.merge(facts, on="cell", how="left")
    out["input_size"] = out["input_size"].fillna(out["image_size"])  # rows without RF notes
    measured = out["r_tilde"].notna()
    out["r_tilde"] = out["r_tilde"].where(measured, out["rf_last_conv"]).astype(float)
    out = out.sort_values(["dataset", "family", "arch", "variant", "pool_level", "seed"])
    out = out[list(COLUMNS)].reset_index(drop=True)
    out.attrs["prune_rate"] = rate
    out.attrs["criterion"] = criterion
    out.attrs["r_tilde_source"] = ("rf_min_feasible_input" if measured.all() else
                                   "analytic r_max of the last conv" if not measured.any()
                                   else "mixed")
    return out


PANELS = (("test_acc", "test accuracy (%)", "final test accuracy"),
          ("pruned_acc", "pruned accuracy (%), {criterion} at rate {rate}",
           "pruned accuracy (one-shot pruning without fine-tuning, our protocol, one setting)"),
          ("lambda_max", "top Hessian eigenvalue, after training",
           "lambda_max (hessian_final, our protocol)"),
          ("padding_only", "weights that only multiply padding (%)",
           "the padding-only share (receptive_field unit)"))


def _per_cell(p: pd.DataFrame, col: str) -> pd.DataFrame:
    """Per cell of ``p``: r̃, the mean of ``col`` over its seeds, their min and max and
    count (seeds without the value left out)."""
    v = p[p[col].notna()]
    return v.groupby("cell").agg(r_tilde=("r_tilde", "first"), mean=(col, "mean"),
                                 low=(col, "min"), high=(col, "max"), n=(col, "size"))


@_styled
def design_space(points: pd.DataFrame, *, dataset: str | None = None) -> Figure | None:
    """Test accuracy, pruned accuracy, lambda_max and the padding-only share against r̃ (log
    x): one point per cell,
    the mean over its seeds with a min-max bar, coloured by knob family and shaped by
    architecture; one row of panels per input size (each with its size dotted), as accuracy
    at one size is not comparable with another's. A quantity no cell has is not drawn and
    the title says so. None when there are no points, or only one cell (nothing to
    compare)."""
    if dataset is not None:
        points = points[points["dataset"] == dataset]
    elif points["dataset"].nunique() > 1:
        raise ValueError(f"the points hold several datasets {sorted(points['dataset'].unique())};"
                         " pass dataset=")
    if points.empty or points["cell"].nunique() < 2:
        return None
    rate = points.attrs.get("prune_rate")
    panels = [(c, t.format(rate=rate, criterion=points.attrs.get("criterion")))
              for c, t, _ in PANELS if points[c].notna().any()]
    absent = [what for c, _, what in PANELS if not points[c].notna().any()]
    sizes = sorted(points["input_size"].dropna().unique())
    rows = [*sizes, *([np.nan] if points["input_size"].isna().any() else [])]
    side = min(4.0, 14.0 / len(panels))  # four panels fit a page's width
    fig = Figure(figsize=(side * len(panels), 3.4 * len(rows) + 0.3), layout="constrained")
    axes = fig.subplots(len(rows), len(panels), squeeze=False)
    families = sorted(points["family"].unique(), key=lambda f: (f != POOL_ONLY, f))
    archs = sorted(points["arch"].unique())
    for axrow, size in zip(axes, rows):
        here = points[points["input_size"] == size] if size == size else \
            points[points["input_size"].isna()]
        for ax, (col, title) in zip(axrow, panels):
            for fi, fam in enumerate(families):
                for ai, arch in enumerate(archs):
                    c = _per_cell(here[(here["family"] == fam) & (here["arch"] == arch)], col)
                    if c.empty:
                        continue
                    k = 1 if col == "lambda_max" else 100
                    ax.errorbar(c["r_tilde"], c["mean"] * k,
                                yerr=spread(c["mean"] * k, c["low"] * k, c["high"] * k),
                                fmt=MARKERS[ai % 8], ms=5, capsize=3, lw=1, alpha=0.85,
                                color=OKABE_ITO[fi % 8],
                                label=f"{fam}, {arch}" if len(archs) > 1 else fam)
            if size == size:
                ax.axvline(size, color="0.3", linestyle=":", linewidth=1)
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
            where = f"input {size:g} px" if size == size else "input size not recorded"
            ax.set_title(f"{title}\n{where}" if len(rows) > 1 else title)
            ax.set_xlabel("r̃ (px)" if points.attrs.get("r_tilde_source") ==
                          "rf_min_feasible_input"
                          else "r̃ (px; analytic r_max of the last conv where not measured)")
    axes[0, 0].legend(loc="best", title="knob family" + (", arch" if len(archs) > 1 else ""))
    size = ", ".join(f"{s:g}" for s in sizes)
    lines = [f"{points['dataset'].iloc[0]}: accuracy, curvature and padding-only weights vs r̃ "
             "(mean over seeds, bar: min-max)",
             f"dotted: input size {size} px" if size else "",
             f"not drawn, no cell has it: {'; '.join(absent)}" if absent else ""]
    fig.suptitle("\n".join(x for x in lines if x), fontsize=10)
    return fig
