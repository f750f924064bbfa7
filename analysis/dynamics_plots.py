"""Training dynamics per receptive field (issue 28): what the ``train.track`` measurements
show epoch by epoch, one grid (arch, dataset, width) per figure, seeds as bands.

Conventions as in :mod:`analysis.plots` (no pyplot, None when the grid has no such rows).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.plots import (CUT_LABEL, _figure, _levels, _panels, _styled, _suptitle,
                            censored_at, integer_ticks, mark_censored, mean_band)
from analysis.stats import grid_frame, select


@_styled
def lambda_trajectory(df: pd.DataFrame, *, arch: str | None = None,
                      dataset: str | None = None, width: float | None = None) -> Figure | None:
    """lambda_max of the training loss after each epoch (``track_lambda_max``) per receptive
    field (mean, min-max band over seeds; log y), with 2 / lr of each epoch dashed: the
    stability threshold of gradient descent, which lambda_max approaches at the edge of
    stability (Cohen et al. 2021; with heavy-ball momentum m it is (2 + 2m) / lr)."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    lam = select(g, stage="train", metric="track_lambda_max")
    if lam.empty:
        return None
    fig, axes = _figure(1, 1, panel=(5.0, 3.6))
    ax = axes[0, 0]
    for cell, label, colour, marker in _levels(g):
        piv = lam[lam["cell"] == cell].pivot_table(index="index", columns="seed",
                                                   values="value", aggfunc="mean")
        mean_band(ax, piv.sort_index(), colour, marker, label)
    lr = (select(g, stage="train", metric="learning_rate").groupby("index")["value"].mean()
          .sort_index())
    lr = lr[lr > 0]
    handles, labels = ax.get_legend_handles_labels()
    if len(lr):
        ax.plot(lr.index.to_numpy(float), 2 / lr.to_numpy(float), color="0.3", ls="--", lw=1)
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1))
        labels.append("2 / lr")
    ax.set_yscale("log")
    integer_ticks(ax.xaxis)
    ax.set_xlabel("epoch")
    ax.set_ylabel("top Hessian eigenvalue")
    ax.legend(handles, labels, loc="best")
    _suptitle(fig, g, "lambda_max during training (band: min-max over seeds)")
    return fig


@_styled
def saturation_trajectory(df: pd.DataFrame, *, arch: str | None = None,
                          dataset: str | None = None, width: float | None = None
                          ) -> Figure | None:
    """Saturation of every layer (rows, forward order) after each epoch (columns), one panel
    per receptive field, mean over seeds, one colour scale: where the unproductive tail forms
    during training."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    sat = select(g, stage="train", metric="track_saturation")
    if sat.empty:
        return None
    levels = [lv for lv in _levels(g) if (sat["cell"] == lv[0]).any()]
    fig, axes = _panels(len(levels), panel=(3.6, 3.4))
    im = None
    for ax, (cell, label, _, _) in zip(axes, levels):
        d = sat[sat["cell"] == cell]
        first = d.drop_duplicates("layer", keep="first")  # rows are written in forward order
        order = list(first["layer"])
        piv = d.pivot_table(index="layer", columns="index", values="value",
                            aggfunc="mean").reindex(order)
        im = ax.imshow(piv.to_numpy(float), vmin=0, vmax=1, cmap="viridis", aspect="auto",
                       origin="upper",
                       extent=(piv.columns.min() - 0.5, piv.columns.max() + 0.5,
                               len(order) - 0.5, -0.5))
        ax.set_yticks(np.arange(len(order)), order, fontsize=6)
        integer_ticks(ax.xaxis)
        ax.set_xlabel("epoch")
        ax.set_title(f"{label}, n={d['seed'].nunique()}")
        ax.grid(False)
    if im is not None:
        fig.colorbar(im, ax=axes, label="saturation", shrink=0.85)
    _suptitle(fig, g, "saturation per layer during training (mean over seeds)")
    return fig


@_styled
def cka_to_final_trajectory(df: pd.DataFrame, *, arch: str | None = None,
                            dataset: str | None = None, width: float | None = None
                            ) -> Figure | None:
    """Linear CKA of each layer at a checkpoint with the same layer of the same seed's final
    weights (``cka.to_final``) vs the checkpoint's epoch, one panel per receptive field, one
    line per layer (forward order: dark = early layers), mean over seeds. Raghu et al.
    (SVCCA): lower layers converge first."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    c = select(g, metric="cka_to_final")
    if c.empty or "epoch" not in c.columns or c["epoch"].isna().all():
        return None
    c = c[c["epoch"].notna()]
    levels = [lv for lv in _levels(g) if (c["cell"] == lv[0]).any()]
    fig, axes = _panels(len(levels), panel=(3.8, 3.2))
    cmap = matplotlib.colormaps["viridis"]
    for ax, (cell, label, _, _) in zip(axes, levels):
        d = c[c["cell"] == cell]
        layers = list(dict.fromkeys(d["layer"]))  # rows are written in forward order
        for i, layer in enumerate(layers):
            s = d[d["layer"] == layer].groupby("epoch")["value"].mean().sort_index()
            ax.plot(s.index.to_numpy(float), s.to_numpy(float), lw=1.2, marker=".",
                    color=cmap(i / max(1, len(layers) - 1)),
                    label=layer if i in (0, len(layers) - 1) else None)
        ax.set_ylim(0, 1.02)
        integer_ticks(ax.xaxis)
        ax.set_xlabel("epoch")
        ax.set_ylabel("CKA with the final layer")
        ax.set_title(f"{label}, n={d['seed'].nunique()}")
        ax.legend(loc="lower right", title="first / last layer")
    _suptitle(fig, g, "representation convergence: each layer vs its final state")
    return fig


@_styled
def erf_trajectory(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                   width: float | None = None) -> Figure | None:
    """ERF size of the last conv (our importance units) vs the epoch of the checkpoint it was
    measured at (init, saved epochs, final), per receptive field, mean and min-max band over
    seeds; hollow where some seed's ERF square reached past the image's edge. None with fewer
    than two epochs measured."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    e = select(g, metric="erf_size", protocol="default")
    if e.empty or "epoch" not in e.columns or e["epoch"].dropna().nunique() < 2:
        return None
    e = e[e["epoch"].notna() & ~e["stage"].astype(str).str.endswith("_best")]
    flags = select(g, metric="erf_size_censored", protocol="default")
    fig, axes = _figure(1, 1, panel=(4.6, 3.4))
    ax = axes[0, 0]
    cut = False
    for cell, label, colour, marker in _levels(g):
        d = e[e["cell"] == cell]
        piv = d.pivot_table(index="epoch", columns="seed", values="value", aggfunc="mean")
        mean_band(ax, piv.sort_index(), colour, marker, label)
        cut |= mark_censored(ax, piv.mean(axis=1), censored_at(d, flags, "epoch"), colour,
                             marker)
    integer_ticks(ax.xaxis)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ERF size (px)")
    ax.legend(loc="best")
    _suptitle(fig, g, "effective receptive field during training"
              + (f"\n({CUT_LABEL})" if cut else ""))
    return fig
