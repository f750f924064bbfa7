"""Probes and saturation per layer (Richter et al., "Size Matters"): the figure per receptive
field with the predicted border and the observed tail, the predicted-vs-observed table, and the
per-position heat maps.

Like :mod:`analysis.plots`: figures are built without pyplot and are None when the grid has no
rows for them; tables are :class:`~analysis.tables.Table` or None.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from analysis.plots import _figure, _levels, _panels, _styled, _suptitle, spread, stage_title
from analysis.stats import final_epoch, grid_frame, select, shared_note
from analysis.tables import (MISSING, Table, _levels_frame, format_mean_std, grid_slug,
                             grid_title)


BORDER_UNIT = "probes_border"  # the probes stage's unit of the predicted border, one per run


def _border(g: pd.DataFrame, cell: str) -> pd.DataFrame:
    """The cell's predicted-border rows, one per seed: those of its ``probes_border`` units
    (a store written before that unit existed has them in each probes unit)."""
    b = select(g, cell=cell, metric="border_predicted")
    own = b[b["stage"] == BORDER_UNIT]
    return (own if len(own) else b).drop_duplicates("seed")


def _per_layer(s: pd.DataFrame, metric: str) -> pd.DataFrame:
    """index x seed table of ``metric`` with the layer names, sorted by index."""
    return select(s, metric=metric).pivot_table(index=["index", "layer"], columns="seed",
                                                values="value").sort_index()


@_styled
def saturation_probes(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                      width: float | None = None, stage: str = "probes_final") -> Figure | None:
    """One panel per receptive field: saturation per layer (bars, mean over seeds; ticks =
    min-max) and probe accuracy per layer (line, mean; band = min-max), the predicted border
    layer (dashed) and the observed tail's first layer in each seed (dotted)."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    s = select(g, stage=stage)
    if select(s, metric="probe_acc").empty:
        return None
    levels = [lv for lv in _levels(g) if len(select(s, cell=lv[0], metric="probe_acc"))]
    n_layers = int(select(s, metric="probe_acc")["index"].max()) + 1
    fig, axes = _panels(len(levels), panel=(max(3.6, 0.22 * n_layers + 1.4), 3.4),
                        max_width=16.0)
    for ax, (cell, label, colour, _) in zip(axes, levels):
        c = select(s, cell=cell)
        # every probed layer has a probe; a layer with too few test samples has no saturation
        sat, acc = _per_layer(c, "saturation"), _per_layer(c, "probe_acc")
        if len(sat):
            x = sat.index.get_level_values("index").to_numpy(int)
            mean = sat.mean(axis=1).to_numpy(float)
            ax.bar(x, mean, color=colour, alpha=0.45, width=0.8, label="saturation")
            ax.errorbar(x, mean, yerr=spread(mean, sat.min(axis=1), sat.max(axis=1)),
                        fmt="none", ecolor="0.3", lw=0.8)
        xa = acc.index.get_level_values("index").to_numpy(int)
        ax.plot(xa, acc.mean(axis=1), color="black", marker="o", ms=3, lw=1.3,
                label=f"probe accuracy, n={acc.shape[1]}")
        ax.fill_between(xa, acc.min(axis=1), acc.max(axis=1), color="black", alpha=0.12, lw=0)
        border = _border(g, cell)["value"].dropna()
        if len(border):
            ax.axvline(float(border.iloc[0]), color="tab:red", ls="--", lw=1.2,
                       label="predicted border")
        for i, start in enumerate(select(c, metric="tail_observed")["value"].dropna()):
            ax.axvline(float(start) - 0.5, color="tab:blue", ls=":", lw=1.0,
                       label="observed tail (per seed)" if i == 0 else None)
        names = acc.index.get_level_values("layer")
        step = max(1, len(names) // 24)
        ax.set_xticks(xa[::step])
        ax.set_xticklabels(list(names[::step]), rotation=90, fontsize=6)
        ax.set_ylim(0, 1.05)
        ax.set_title(label)
        ax.set_ylabel("saturation / probe accuracy")
    handles = {}  # below the panels, where it covers no bar (every panel's entries, once)
    for ax in axes:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    if "saturation" in handles:  # each panel's bars have the colour of its RF
        handles["saturation"] = Patch(color="0.5", alpha=0.45)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncol=len(handles), fontsize=7, frameon=False)
    _suptitle(fig, g, f"saturation and probe accuracy per layer, {stage_title(stage)}")
    return fig


@_styled
def position_maps(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                  width: float | None = None, stage: str = "probes_final",
                  relative: bool = True) -> Figure | None:
    """Per-position probe accuracy of every heat-map layer (``probes.position_layers``; rows,
    in forward order) per receptive field (columns), mean over seeds, one colour scale.
    ``relative``: each seed's map divided by that run's test accuracy after training ("Size
    Matters": where in the feature map the network's decision is already readable, as a
    share of what the network achieves); seeds without a training accuracy are left out."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    s = select(g, stage=stage, metric="position_probe_acc")
    if s.empty:
        return None
    if relative:
        acc = final_epoch(select(g, stage="train", metric="test_acc")).groupby("run_id")[
            "value"].mean()
        s = s[s["run_id"].isin(acc.index)]
        s = s.assign(value=s["value"] / s["run_id"].map(acc).astype(float))
        if s.empty:
            return None
    order = select(g, stage=stage, metric="probe_acc").groupby("layer")["index"].min()
    layers = sorted(s["layer"].dropna().unique(), key=lambda n: (order.get(n, 1e9), n))
    levels = [lv for lv in _levels(g) if len(select(s, cell=lv[0]))]
    fig, axes = _figure(len(layers), len(levels), panel=(3.0, 2.8))
    top = max(1.0, float(s["value"].max())) if relative else 1.0
    im = None
    for row, layer in zip(axes, layers):
        for j, (ax, (cell, label, _, _)) in enumerate(zip(row, levels)):
            c = select(s, cell=cell, layer=layer)
            if c.empty:
                ax.set_title(f"{label}\nmissing")
                ax.set_axis_off()
                continue
            piv = c.pivot_table(index="coord_y", columns="coord_x", values="value")
            im = ax.imshow(piv.to_numpy(float), vmin=0, vmax=top, cmap="magma", origin="upper")
            # the level on one line, the input size on the next: in one line, the titles of
            # neighbouring panels ran into each other
            ax.set_title(f"{label}, n={c['seed'].nunique()}".replace(", ", "\n", 1),
                         fontsize=9)
            ax.set_xlabel("column")
            ax.set_ylabel(f"{layer}\nrow" if j == 0 else "row")
            ax.grid(False)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85,
                     label="probe accuracy / network test accuracy" if relative
                     else "probe accuracy")
    _suptitle(fig, g, f"{'relative ' if relative else ''}probe accuracy per position, "
                      f"{stage_title(stage)}")
    return fig


def border_table(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                 width: float | None = None, stage: str = "probes_final") -> Table | None:
    """Rows = receptive field: the predicted border layer (architecture and input size alone)
    and the observed start of the tail in each seed, with their agreement."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    s = select(g, stage=stage)
    if select(s, metric="probe_acc").empty:
        return None
    rows, numbers = [], []
    for lv in _levels_frame(g).itertuples(index=False):
        c = select(s, cell=lv.cell)
        seeds = sorted(select(c, metric="probe_acc")["seed"].dropna().unique())
        if not seeds:
            continue
        border = _border(g, lv.cell)
        predicted = (f"{border['layer'].iloc[0]} (#{int(border['value'].iloc[0])})"
                     if len(border) else "none")
        tails = select(c, metric="tail_observed").set_index("seed")
        observed = [(f"{tails.loc[sd, 'layer']} (#{int(tails.loc[sd, 'value'])})"
                     if sd in tails.index else "none") for sd in seeds]
        agree = sum(o == predicted for o in observed)
        layers = int(select(c, metric="probe_acc")["index"].max()) + 1
        starts = [float(tails.loc[sd, "value"]) if sd in tails.index else np.nan for sd in seeds]
        gaps = np.array(starts) - (float(border["value"].iloc[0]) if len(border) else np.nan)
        gaps = gaps[np.isfinite(gaps)]
        rows.append({"Receptive field": lv.label,
                     "Layers probed": str(layers), "Predicted border": predicted,
                     "Observed tail start (per seed)": ", ".join(observed) or MISSING,
                     "Agree": f"{agree}/{len(seeds)}",
                     "Observed − predicted (layers)": (format_mean_std(
                         float(gaps.mean()), float(gaps.std(ddof=1)) if gaps.size > 1
                         else math.nan, gaps.size) if gaps.size else MISSING)})
        numbers.append({"cell": lv.cell,
                        "predicted": float(border["value"].iloc[0]) if len(border) else np.nan,
                        "observed_mean": float(np.nanmean(starts)) if any(
                            np.isfinite(starts)) else np.nan,
                        "agree": agree, "seeds": len(seeds)})
    kept = s.dropna(subset=["note"]).drop_duplicates(["note", "cell", "metric"])
    note = shared_note(kept["note"], kept["cell"], kept["metric"])
    return Table(f"{grid_slug(g)}-{stage}-border".replace("_", "-"),
                 f"{grid_title(g)}: predicted border layer vs observed tail ({stage})",
                 pd.DataFrame(rows), pd.DataFrame(numbers),
                 "Predicted: the first probed layer whose input's minimum receptive field covers "
                 "the image (rfa-toolbox's test, from the architecture alone). Observed: the "
                 "first layer after which probe accuracy improves by less than epsilon and from "
                 "which saturation stays below the mean over layers (# = position among the "
                 "probed layers); observed − predicted: mean ± std (ddof=1) over the seeds with "
                 f"a tail; {note}.")
