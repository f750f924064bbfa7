"""Figures of the loss-landscape geometry: 1D slices, 2D planes, mode connectivity.

Like :mod:`analysis.plots`: each takes the tidy DataFrame (one grid), returns a Figure built
without pyplot, or None when the grid has no rows for it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.plots import (_figure, _levels, _panels, _styled, _suptitle, mean_band,
                            present_stages, stage_title)
from analysis.stats import grid_frame, pruning_rows, select
from analysis.tables import settings_tag


def slice_title(stage: str) -> str:
    """``slice_hessian_1d_final`` -> "final ... (top Hessian eigenvectors)"."""
    return stage_title(stage) + (", top Hessian eigenvectors" if "_hessian_" in stage
                                 else "")


@_styled
def slice_curves(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                 width: float | None = None) -> Figure | None:
    """1D loss slices: training loss vs the coordinate along a filter-normalised random
    direction or the top Hessian eigenvector, one line per receptive field (mean over seeds,
    band = min-max), one panel per checkpoint and kind of direction. Log y."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    s = select(g, metric="slice_loss")
    stages = [st for st in present_stages(s, "slice") if "_1d_" in st]
    if not stages:
        return None
    fig, axes = _panels(len(stages), panel=(5.2, 3.4))
    for ax, st in zip(axes, stages):
        for cell, label, colour, marker in _levels(g):
            mean_band(ax, select(s, stage=st, cell=cell).pivot_table(
                index="coord_x", columns="seed", values="value"), colour, marker, label)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(5))  # 0.0025-steps would overlap
        ax.set_xlabel("coordinate along the direction ("
                      + ("units of ||w||)" if "_hessian_" in st else "filter-normalised)"))
        ax.set_ylabel("training loss")
        ax.set_title(slice_title(st))
    axes[-1].legend(loc="upper center")
    _suptitle(fig, g, "1D loss slices (line = mean over seeds, band = min–max)")
    return fig


@_styled
def slice_planes(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                 width: float | None = None, stage: str | None = None,
                 n_levels: int = 12) -> Figure | None:
    """2D loss slices: contours of log10 of the training loss (mean over seeds) on the plane of
    two filter-normalised random directions (or the top two Hessian eigenvectors), one panel per
    receptive field, the same contour levels in every panel. ``stage``: the 2D unit (default:
    the first present)."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    s = select(g, metric="slice_loss")
    stages = [st for st in present_stages(s, "slice") if "_2d_" in st]
    if stage is None:
        stage = stages[0] if stages else None
    if stage not in stages:
        return None
    s = select(s, stage=stage)
    grids = []
    for cell, label, _, _ in _levels(g):
        piv = select(s, cell=cell).pivot_table(index="coord_y", columns="coord_x",
                                               values="value", aggfunc="mean")
        grids.append((label, piv, int(select(s, cell=cell)["seed"].nunique())))
    values = np.concatenate([np.log10(p.to_numpy(float)).ravel() for _, p, _ in grids
                             if not p.empty])
    levels = np.linspace(np.nanmin(values), np.nanmax(values), n_levels)
    fig, axes = _panels(len(grids), panel=(3.4, 3.1))
    cs = None
    for ax, (label, piv, n) in zip(axes, grids):
        if piv.empty:
            ax.set_title(f"{label}\nmissing")
            ax.set_axis_off()
            continue
        cs = ax.contourf(piv.columns.to_numpy(float), piv.index.to_numpy(float),
                         np.log10(piv.to_numpy(float)), levels=levels, cmap="viridis")
        ax.plot([0], [0], marker="+", color="white", ms=8)
        ax.set_title(f"{label}, n={n}")
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.grid(False)
    if cs is not None:
        fig.colorbar(cs, ax=axes, label="log10 training loss", shrink=0.85)
    _suptitle(fig, g, f"2D loss slices {slice_title(stage)} (mean over seeds; shared levels; "
                      "+ = the trained weights)")
    return fig


@_styled
def connectivity(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                 width: float | None = None) -> Figure | None:
    """Linear mode connectivity: the loss on the path between two seeds (mean over pairs,
    band = min-max) per receptive field, and the loss barrier of every pair per receptive
    field (dots; bar = mean)."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    path, barrier = select(g, metric="path_loss"), select(g, metric="loss_barrier")
    stages = present_stages(barrier, "connectivity")
    if not stages:
        return None
    st = "connectivity_final" if "connectivity_final" in stages else stages[0]
    path, barrier = select(path, stage=st), select(barrier, stage=st)
    fig, axes = _figure(1, 2, panel=(4.2, 3.2))
    left, right = axes[0]
    labels = []
    for i, (cell, label, colour, marker) in enumerate(_levels(g)):
        mean_band(left, select(path, cell=cell).pivot_table(
            index="coord_x", columns=["seed", "seed_b"], values="value"), colour, marker, label,
            what="pairs: ")
        b = select(barrier, cell=cell)["value"].to_numpy(float)
        labels.append(label)
        if b.size:
            right.scatter(np.full(b.size, i), b, color=colour, marker=marker, zorder=3)
            right.bar(i, b.mean(), color=colour, alpha=0.3, width=0.6)
    left.set_xlabel("α (0 = seed a, 1 = seed b)")
    left.set_ylabel("training loss")
    left.set_title("loss on the linear path")
    left.legend(loc="upper right")
    right.set_xticks(range(len(labels)))
    right.set_xticklabels(labels, rotation=20, ha="right")
    right.set_ylabel("loss barrier")
    right.set_title("barrier per seed pair")
    _suptitle(fig, g, f"linear mode connectivity between seeds, {stage_title(st)}")
    return fig


@_styled
def pruned_curvature(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                     width: float | None = None, criterion: str = "magnitude",
                     protocol: str = "default", prune_settings: str | None = None,
                     finetune_settings: str | None = None) -> Figure | None:
    """The top eigenvalue of the Hessian on the unpruned weights vs the pruning rate, one line
    per receptive field (mean over seeds, band = min-max); one panel after pruning, one after
    fine-tuning when present. The settings as in :func:`analysis.stats.pruning_rows`."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    top = select(pruning_rows(g, criterion=criterion, protocol=protocol,
                              prune_settings=prune_settings,
                              finetune_settings=finetune_settings),
                 metric="pruned_hessian_eigenvalue", index=1)
    if top.empty:
        return None
    panels = [ft for ft in (False, True) if len(select(top, finetuned=ft))]
    fig, axes = _panels(len(panels), panel=(4.2, 3.2))
    for ax, ft in zip(axes, panels):
        for cell, label, colour, marker in _levels(g):
            mean_band(ax, select(top, cell=cell, finetuned=ft).pivot_table(
                index="prune_rate", columns="seed", values="value"), colour, marker, label)
        ax.set_yscale("log")
        ax.set_xlabel("pruning rate (fraction of weights removed)")
        ax.set_ylabel("λ_max on the unpruned weights")
        ax.set_title("after fine-tuning" if ft else "after pruning")
        ax.legend(loc="best")
    _suptitle(fig, g, f"curvature of the pruned networks, criterion {criterion}"
              + settings_tag(prune_settings, finetune_settings)
              + (" (paper protocol)" if protocol == "paper" else ""))
    return fig
