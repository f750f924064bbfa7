"""Figures of Luo et al.'s ERF sweep (``landscape.importance.luo``), built without pyplot:
the ERF maps per depth (Luo's Figure 1), sigma vs depth on log-log axes with the fitted power
laws, and ERF / RF vs depth."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import MARKERS, OKABE_ITO, _figure, _panels, _plain_log_ticks, _styled


@_styled
def erf_images(maps: Mapping[int, np.ndarray], rf: Mapping[int, int], setting: str) -> Figure:
    """One panel per depth: the ERF map scaled to its own maximum (Luo's Figure 1), cropped
    to the square of side ``rf[depth]`` (the theoretical RF) centred on the map's centre."""
    if not maps:
        raise ValueError(f"setting {setting!r}: no ERF maps to draw")
    depths = sorted(maps)
    fig, axes = _panels(len(depths), panel=(2.0, 2.1))
    for ax, d in zip(axes, depths):
        (h, w), r = maps[d].shape, rf[d] // 2
        m = maps[d][max(h // 2 - r, 0): h // 2 + r + 1, max(w // 2 - r, 0): w // 2 + r + 1]
        ax.imshow(m / m.max(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{d} layer{'s' if d > 1 else ''}, RF {rf[d]}")
        ax.set_axis_off()
    fig.suptitle(f"ERF of the centre unit: {setting} (each panel: its theoretical RF)",
                 fontsize=10)
    return fig


@_styled
def size_vs_depth(rows: pd.DataFrame, slopes: pd.DataFrame) -> Figure:
    """ERF sigma vs depth per setting, log-log, with the fitted line and its slope (95 % CI)
    in the legend (``slopes``: :func:`analysis.erf.depth_slopes` of ``sigma``)."""
    fig, axes = _figure(1, 1, panel=(5.2, 3.8))
    ax = axes[0, 0]
    fits = slopes.set_index("setting")
    for i, (setting, g) in enumerate(rows.groupby("setting", sort=False)):
        g = g.sort_values("depth")
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        f = fits.loc[setting]
        ci = "" if np.isnan(f["ci_low"]) else f" [{f['ci_low']:.2f}, {f['ci_high']:.2f}]"
        ax.plot(g["depth"], g["sigma"], MARKERS[i % len(MARKERS)], color=colour,
                label=f"{setting}: slope {f['slope']:.2f}{ci}")
        if not np.isnan(f["slope"]):
            ax.plot(g["depth"], np.exp(f["intercept"]) * g["depth"] ** f["slope"], "-",
                    color=colour, linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        _plain_log_ticks(axis)
    ax.set_xlabel("depth (conv layers)")
    ax.set_ylabel("ERF sigma (pixels)")
    ax.legend(title="log-log slope [95% CI]")
    return fig


@_styled
def ratio_vs_depth(rows: pd.DataFrame) -> Figure:
    """ERF size / theoretical RF vs depth per setting (log-log)."""
    fig, axes = _figure(1, 1, panel=(5.2, 3.8))
    ax = axes[0, 0]
    for i, (setting, g) in enumerate(rows.groupby("setting", sort=False)):
        g = g.sort_values("depth")
        ax.plot(g["depth"], g["erf_rf_ratio"], "-" + MARKERS[i % len(MARKERS)],
                color=OKABE_ITO[i % len(OKABE_ITO)], label=setting)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        _plain_log_ticks(axis)
    ax.set_xlabel("depth (conv layers)")
    ax.set_ylabel("ERF size (95% mass) / theoretical RF")
    ax.legend()
    return fig
