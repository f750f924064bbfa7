"""Training dynamics per receptive field (issue 28): what the ``train.track`` measurements
show epoch by epoch, one grid (arch, dataset, width) per figure, seeds as bands.

Conventions as in :mod:`analysis.plots` (no pyplot, None when the grid has no such rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.plots import _figure, _levels, _styled, _suptitle, mean_band
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
    fig, axes = _figure(1, len(levels), panel=(3.6, 3.4))
    im = None
    for ax, (cell, label, _, _) in zip(axes[0], levels):
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
        ax.set_xlabel("epoch")
        ax.set_title(f"{label}, n={d['seed'].nunique()}")
        ax.grid(False)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), label="saturation", shrink=0.85)
    _suptitle(fig, g, "saturation per layer during training (mean over seeds)")
    return fig
