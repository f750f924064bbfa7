"""Figures over the tidy DataFrame, one grid (arch, dataset, width) per figure.

Every function takes the DataFrame (plus ``arch``/``dataset``/``width`` filters, which may be
left out when the data holds one grid) and returns a ``matplotlib.figure.Figure`` built without
pyplot (no global state, no window). It returns ``None`` when the grid has no rows for that
figure (the stage was not run), and raises ``ValueError`` for ambiguous filters or bad
arguments. Colours: Okabe-Ito (colour-blind safe), plus a marker per receptive field. Axes
of whole numbers (eigenvalue rank, epoch, layer index) have integer ticks only.
"""

from __future__ import annotations

import functools
import math
import re
import textwrap
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from analysis.stats import final_epoch, grid_frame, note_fields, pruning_rows, select
from analysis.tables import cell_levels, grid_title, rf_label, settings_tag, size_label

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
             "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
PROTOCOL_MARKERS = ("*", "d", "p", "<", ">", "8", "x", "+")  # none of MARKERS: not a level's
STYLE = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}
CHECKPOINT_TITLES = {"init": "at initialisation", "final": "after training",
                     "best": "best test-accuracy epoch"}
Arrays = Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]  # stage -> run_id -> name -> array


def _styled(fn: Callable[..., Figure | None]) -> Callable[..., Figure | None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure | None:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def _levels(g: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(cell, label, colour, marker) per cell of a grid, by increasing receptive field."""
    lv = cell_levels(g)
    return [(c, label, OKABE_ITO[i % 8], MARKERS[i % 8])
            for i, (c, label) in enumerate(zip(lv["cell"], lv["label"]))]


def stage_checkpoint(stage: str) -> str:
    """The checkpoint a unit name ends with: ``"hessian_final"`` -> ``"final"``,
    ``"hessian_epoch_5"`` -> ``"epoch_5"`` (a saved epoch, train.save_epochs)."""
    parts = stage.split("_")
    if len(parts) >= 3 and parts[-2] == "epoch" and parts[-1].isdigit():
        return f"epoch_{parts[-1]}"
    return parts[-1]


def checkpoint_rank(stage: str) -> tuple[int, int]:
    """Order of checkpoints: init, the saved epochs in order, final, best, anything else."""
    c = stage_checkpoint(stage)
    if c.startswith("epoch_"):
        return 1, int(c.split("_")[1])
    return {"init": (0, 0), "final": (2, 0), "best": (3, 0)}.get(c, (9, 0))


def stage_title(stage: str) -> str:
    """``"hessian_paper_best"`` -> ``"best test-accuracy epoch (paper protocol)"``: the
    checkpoint a unit measured, and the protocol when it is the paper's."""
    c = stage_checkpoint(stage)
    parts = stage[:-len(c)].rstrip("_").split("_")
    title = (f"after epoch {c.split('_')[1]}" if c.startswith("epoch_")
             else CHECKPOINT_TITLES.get(c, stage))
    return title + (" (paper protocol)" if "paper" in parts[1:] else "")


def mean_band(ax: Any, piv: pd.DataFrame, colour: str, marker: str, label: str,
              what: str = "n=", ls: str = "-") -> None:
    """The mean over the columns of ``piv`` (e.g. seeds) vs its index (line style ``ls``),
    with a min-max band (an error bar where the index has one value: a band of no width is
    not drawn); nothing for an empty table."""
    if piv.empty:
        return
    x = piv.index.to_numpy(float)
    mean, low, high = piv.mean(axis=1), piv.min(axis=1), piv.max(axis=1)
    ax.plot(x, mean, color=colour, marker=marker, ms=3, lw=1.5, ls=ls,
            label=f"{label}, {what}{piv.shape[1]}")
    if len(x) == 1:
        ax.errorbar(x, mean, yerr=spread(mean, low, high), color=colour, capsize=4, lw=1.5)
    else:
        ax.fill_between(x, low, high, color=colour, alpha=0.2, lw=0)


def spread(mean: Any, low: Any, high: Any) -> list[np.ndarray]:
    """``yerr`` of a min-max error bar around ``mean``: the mean of equal values can round a
    hair past them (0.1 three times), and matplotlib refuses a negative length."""
    mean = np.asarray(mean, float)
    return [np.maximum(0, mean - np.asarray(low, float)),
            np.maximum(0, np.asarray(high, float) - mean)]


CUT_LABEL = "hollow: the image cut the ERF (some seed)"


def censored_at(values: pd.DataFrame, flags: pd.DataFrame, x: str,
                keys: Sequence[str] = ("run_id", "stage")) -> set:
    """The ``x`` values of ``values`` (ERF size rows) where some seed's ERF square reached
    past the image's edge: a ``flags`` row (``erf_size_censored`` / ``layer_erf_censored``)
    with value 1 for the same ``keys``."""
    if flags.empty or values.empty:
        return set()
    cut = flags.loc[flags["value"] > 0, list(keys)].drop_duplicates()
    return set(values.merge(cut, on=list(keys))[x])


def mark_censored(ax: Any, mean: pd.Series, at: set, colour: str, marker: str) -> bool:
    """A hollow marker over the points of ``mean`` (y by x) at the x values ``at``: sizes
    bounded by the image, not by the network. Whether any was drawn."""
    shown = mean[mean.index.isin(at)]
    if shown.empty:
        return False
    ax.plot(shown.index.to_numpy(float), shown.to_numpy(float), ls="none", marker=marker,
            ms=8, mfc="white", mec=colour, mew=1.5, zorder=3)
    return True


def legend_below(fig: Figure, axes: Sequence[Any], max_cols: int = 2) -> None:
    """One legend under the panels with every panel's entries once: a legend inside a panel
    covered the lines once the labels named input sizes and protocols."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:  # as many columns as fit the figure's width (7 pt text: ~0.053 in a char)
        column = 0.6 + 0.053 * max(map(len, entries))
        ncol = max(1, min(max_cols, len(entries), int(fig.get_figwidth() // column)))
        fig.legend(list(entries.values()), list(entries), loc="outside lower center",
                   ncol=ncol, fontsize=7, frameon=False)


def integer_ticks(axis: Axis) -> None:
    """Ticks at whole numbers only (eigenvalue rank, epoch, layer index), one at least (a
    single rank or epoch)."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def present_stages(d: pd.DataFrame, prefix: str,
                   stages: Sequence[str] | None = None) -> list[str]:
    """The stage units of ``d`` named ``<prefix>_...`` (or those of ``stages``), ours before
    the paper's, each by checkpoint: init, the saved epochs in order, final, best."""
    found = set(d["stage"].dropna().unique())
    names = [s for s in found if s.startswith(prefix + "_")] if stages is None else \
        [s for s in stages if s in found]
    return sorted(names, key=lambda s: ("_paper_" in s, checkpoint_rank(s), s))


def _suptitle(fig: Figure, g: pd.DataFrame, what: str, fontsize: float = 10) -> None:
    """The grid's title over ``what``, each line wrapped to the figure's width (a long one on
    a one- or two-panel figure was cut off at both edges): as few lines as fit, by the text's
    width measured in the current font."""
    renderer = RendererAgg(1, 1, 72)  # 72 dpi: widths in points
    font = FontProperties(size=fontsize)
    room = 0.95 * fig.get_figwidth() * 72

    def fits(chars: int, line: str) -> bool:
        return all(renderer.get_text_width_height_descent(part, font, ismath=False)[0] <= room
                   for part in textwrap.wrap(line, chars))

    lines = []
    for line in f"{grid_title(g)}\n{what}".split("\n"):
        lo, hi = 10, max(10, len(line))  # the widest wrap that fits: binary search on chars
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid, line) else (lo, mid - 1)
        lines += textwrap.wrap(line, lo) or [""]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis tick labels as plain numbers (0.3, 1, 20) instead of 3 x 10^-1; minor ticks
    labelled only at mantissas 2, 3 and 5 so that two decades stay legible, or every minor tick
    where the view holds fewer than two of those (0.218 to 0.257 had no label at all)."""
    def minor(v: float, _: Any) -> str:
        if v <= 0:
            return ""
        lo, hi = sorted(axis.get_view_interval())
        marked = [m * 10.0 ** e for e in range(math.floor(math.log10(max(lo, 1e-300))),
                                                math.floor(math.log10(max(hi, 1e-300))) + 1)
                  for m in (1, 2, 3, 5)]
        if sum(lo <= x <= hi for x in marked) < 2:
            return f"{v:.3g}"
        mantissa = v / 10 ** math.floor(math.log10(v))
        return f"{v:g}" if any(math.isclose(mantissa, m) for m in (2, 3, 5)) else ""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _figure(nrows: int, ncols: int,
            panel: tuple[float, float] = (3.8, 3.0)) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.4), layout="constrained")
    return fig, np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))


def _panels(n: int, panel: tuple[float, float] = (3.8, 3.0),
            max_width: float = 13.0) -> tuple[Figure, list[Any]]:
    """``n`` panels of size ``panel`` (inches), as many to a row as fit in ``max_width``
    inches (one at least), row after row (one row of five pool levels or six checkpoints was
    too wide to read at a page's width); the panels in reading order, the unused cells of the
    last row removed."""
    ncols = max(1, min(n, int(max_width // panel[0])))
    nrows = -(-n // ncols)
    fig, axes = _figure(nrows, ncols, panel)
    for ax in axes.ravel()[n:]:
        fig.delaxes(ax)
    return fig, list(axes.ravel()[:n])


# ---------------------------------------------------------------------------------------------
@_styled
def hessian_eigenvalues(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                        width: float | None = None,
                        stages: Sequence[str] | None = None) -> Figure | None:
    """Top-k eigenvalues vs rank, one line per receptive field (mean over seeds, band = min-max
    over seeds), one panel per stage. Log y; symlog (linear within 1e-3 max|λ|) if any
    eigenvalue is <= 0, said in the axis label."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    e = select(g, metric="hessian_eigenvalue")
    present = present_stages(e, "hessian", stages)
    e = select(e, stage=present)
    if not present:
        return None
    fig, axes = _panels(len(present))
    positive = bool((e["value"] > 0).all())
    for ax, st in zip(axes, present):
        for cell, label, colour, marker in _levels(g):
            mean_band(ax, select(e, stage=st, cell=cell).pivot_table(
                index="index", columns="seed", values="value"), colour, marker, label)
        if positive:
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
        else:
            ax.set_yscale("symlog", linthresh=max(1e-3 * float(e["value"].abs().max()), 1e-12))
        integer_ticks(ax.xaxis)
        ax.set_xlim(0.5, float(select(e, stage=st)["index"].max()) + 0.5)  # k = 1: one tick
        ax.set_xlabel("rank k (1 = largest)")
        ax.set_ylabel("Hessian eigenvalue λ_k" + ("" if positive else " (symlog)"))
        ax.set_title(stage_title(st))
    axes[-1].legend(loc="upper right")
    _suptitle(fig, g, "top Hessian eigenvalues (line = mean over seeds, band = min–max)")
    return fig


def gaussian_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray,
                     sigma: float) -> np.ndarray:
    """sum_i w_i N(grid; node_i, sigma^2) / sum_i w_i: the SLQ spectral density broadened by a
    Gaussian of std ``sigma`` (eigenvalue units); integrates to 1 over the real line."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    nodes, weights = np.asarray(nodes, float), np.asarray(weights, float)
    z = (np.asarray(grid, float)[:, None] - nodes[None, :]) / sigma
    return (np.exp(-0.5 * z**2) @ weights) / (weights.sum() * sigma * math.sqrt(2 * math.pi))


@_styled
def spectral_density(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                     width: float | None = None,
                     stages: Sequence[str] | None = None,
                     bandwidth: float = 0.01, sigma: float | None = None,
                     n_grid: int = 1000) -> Figure | None:
    """Hessian spectral density per receptive field (mean of the per-seed densities), one panel
    per stage (default: every hessian stage present): the Lanczos quadrature nodes and weights
    of the rows (SLQ for our protocol; the one all-ones-start run for the paper's). Each node
    is broadened by a Gaussian of std ``sigma``, by default ``bandwidth`` x (max - min node)
    of the panel (shown in the panel), drawn on a grid that resolves every node's Gaussian
    however small ``sigma`` is. Log y, floored at 1e-6 of the peak."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    keys = ["cell", "run_id", "stage", "index"]
    nodes = select(g, metric="hessian_density_node")[keys + ["value"]]
    weights = select(g, metric="hessian_density_weight")[keys + ["value"]]
    nw = nodes.merge(weights, on=keys, suffixes=("_node", "_weight"))
    present = present_stages(nw, "hessian", stages)
    if not present:
        return None
    fig, axes = _panels(len(present))
    for ax, st in zip(axes, present):
        p = nw[nw["stage"] == st]
        lo, hi = float(p["value_node"].min()), float(p["value_node"].max())
        s = sigma if sigma is not None else bandwidth * (hi - lo if hi > lo else max(abs(hi), 1.0))
        # a uniform grid, plus 41 points across +-4 sigma of every node: a sigma far below the
        # grid step (the paper's 0.057 over a range of 3e4) would otherwise be sampled at
        # arbitrary heights or missed
        local = p["value_node"].to_numpy(float)[:, None] + s * np.linspace(-4, 4, 41)
        x = np.unique(np.concatenate([np.linspace(lo - 4 * s, hi + 4 * s, n_grid),
                                      local.ravel()]))
        peak = 0.0
        for cell, label, colour, _ in _levels(g):
            runs = [gaussian_density(r["value_node"], r["value_weight"], x, s)
                    for _, r in p[p["cell"] == cell].groupby("run_id")]
            if runs:
                dens = np.mean(runs, axis=0)
                peak = max(peak, float(dens.max()))
                ax.plot(x, dens, color=colour, lw=1.5, label=f"{label}, n={len(runs)}")
        ax.set_yscale("log")
        ax.set_ylim(peak * 1e-6, peak * 3)
        ax.text(0.02, 0.97, f"Gaussian σ = {s:.3g}", transform=ax.transAxes, va="top", fontsize=8)
        ax.set_xlabel("eigenvalue λ")
        ax.set_ylabel("spectral density (per unit λ)")
        ax.set_title(stage_title(st))
    axes[-1].legend(loc="upper right")
    _suptitle(fig, g, "Hessian spectral density (Lanczos quadrature, mean over seeds)")
    return fig


# ---------------------------------------------------------------------------------------------
def cka_matrix(rows: pd.DataFrame, *,
               include_self: bool = False) -> tuple[list[str], np.ndarray | None]:
    """Layers (in order of first appearance) and the CKA matrix averaged over seed pairs of one
    cell and stage. Pairs a != b count in both orders (M_ab and M_ab^T when only one order is
    stored); self pairs only with ``include_self``. None if no pair qualifies."""
    layers = list(dict.fromkeys([*rows["layer"].dropna(), *rows["layer_b"].dropna()]))
    pos = {name: i for i, name in enumerate(layers)}
    stored = set(zip(rows["seed"], rows["seed_b"]))
    mats = []
    for (a, b), r in rows.groupby(["seed", "seed_b"]):
        if a == b and not include_self:
            continue
        m = np.full((len(layers), len(layers)), np.nan)
        m[r["layer"].map(pos).to_numpy(int), r["layer_b"].map(pos).to_numpy(int)] = r["value"]
        mats.append(m)
        if a != b and (b, a) not in stored:
            mats.append(m.T)
    return layers, (np.nanmean(mats, axis=0) if mats else None)


@_styled
def cka_matrices(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                 width: float | None = None, stage: str = "cka_final",
                 include_self: bool = False, max_cols: int = 4) -> Figure | None:
    """One CKA heatmap per receptive field (layer index of seed a vs seed b, averaged over seed
    pairs, see :func:`cka_matrix`), shared colour scale 0..1, dashed lines at the middle layer.
    Each heatmap fills its panel: the constrained layout sizes the panels' boxes, and an image
    of fixed aspect shrunk inside its box pushed the x label off the figure and the titles
    onto the suptitle."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    c = select(g, metric="cka", stage=stage)
    panels = [(label, *cka_matrix(select(c, cell=cell), include_self=include_self))
              for cell, label, _, _ in _levels(g)]
    if all(m is None for _, _, m in panels):
        return None
    ncols = min(len(panels), max_cols)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(nrows, ncols, panel=(3.2, 3.0))
    im = None
    for ax, (label, layers, m) in zip(axes.ravel(), panels):
        if m is None:  # a receptive field without CKA rows keeps its (empty) panel
            ax.set_title(f"{label}\nmissing")
            ax.set_axis_off()
            continue
        im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower", aspect="auto")
        mid = (len(layers) - 1) / 2
        ax.axhline(mid, color="white", ls="--", lw=1)
        ax.axvline(mid, color="white", ls="--", lw=1)
        step = max(1, len(layers) // 10)
        ax.set_xticks(range(0, len(layers), step))
        ax.set_yticks(range(0, len(layers), step))
        ax.grid(False)
        ax.set_title(label)
        ax.set_xlabel("layer index (seed b)")
        ax.set_ylabel("layer index (seed a)")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="linear CKA", shrink=0.85)
    pairs = "seed pairs incl. self" if include_self else "pairs of different seeds"
    _suptitle(fig, g, f"layerwise linear CKA {stage_title(stage)}\n"
                      f"(mean over {pairs}; dashed = middle layer)")
    return fig


# ---------------------------------------------------------------------------------------------
@_styled
def importance_maps(df: pd.DataFrame, arrays: Arrays | None, *, arch: str | None = None,
                    dataset: str | None = None, width: float | None = None,
                    stages: Sequence[str] | None = None) -> Figure | None:
    """Mean projected-gradient importance map per receptive field (mean of the seeds' mean
    maps; rows = stages, columns = receptive fields), each with its own colour scale and the
    mean over seeds of ``importance_max`` in the title; a cell whose seeds' maps are of
    different layers (the default layer, the deepest conv, moved between their runs) is not
    averaged: its panel names the layers. ``arrays`` maps stage -> the output of
    ``landscape.results.load_arrays(root, stage)``; ``stages``: default every importance stage
    with arrays."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    levels = _levels(g)
    grid_runs = set(g["run_id"].dropna())
    maps: dict[tuple[str, str], list[np.ndarray]] = {}
    layers: dict[tuple[str, str], Counter] = {}  # how many seeds' maps are of each layer
    stages = present_stages(pd.DataFrame({"stage": list(arrays or {})}), "importance", stages)
    for st in stages:
        layer_of = select(g, stage=st, metric="importance_max").set_index("run_id")["layer"]
        for run_id, arr in (arrays or {}).get(st, {}).items():
            if run_id in grid_runs and "mean_map" in arr:
                key = (st, run_id.split("/seed=")[0])
                maps.setdefault(key, []).append(np.asarray(arr["mean_map"]))
                layers.setdefault(key, Counter())[str(layer_of.get(run_id, "?"))] += 1
    present = [s for s in stages if any(k[0] == s for k in maps)]
    if not present:
        return None
    fig, axes = _figure(len(present), len(levels), panel=(3.3, 3.0))
    for row, st in zip(axes, present):
        for j, (ax, (cell, label, _, _)) in enumerate(zip(row, levels)):
            ms = maps.get((st, cell))
            if not ms:
                ax.set_title(f"{label}\nmissing")
                ax.set_axis_off()
                continue
            if len(layers[(st, cell)]) > 1:  # the default layer moved between seeds' runs
                ax.set_title(f"{label}\nseeds measured different layers:\n" + ", ".join(
                    f"{n} ({k})" for n, k in layers[(st, cell)].items()), fontsize=7)
                ax.set_axis_off()
                continue
            if len({m.shape for m in ms}) != 1:
                raise ValueError(f"importance maps of {cell} ({st}) differ in shape")
            shown, power = _decade_scaled(np.mean(ms, axis=0))
            im = ax.imshow(shown, cmap="magma", origin="upper")
            bar = "|∂ out / ∂ pixel|" if j == len(levels) - 1 else ""
            fig.colorbar(im, ax=ax, shrink=0.8,
                         label=f"{bar} (× 1e{power})".lstrip() if power else bar or None)
            mx = select(g, stage=st, cell=cell, metric="importance_max")["value"]
            ax.set_title(f"{label}\nmean max = "
                         + (f"{mx.mean():.3g} (n={mx.size})" if mx.size else "missing"))
            ax.set_xlabel("x (px)")
            ax.set_ylabel(f"{stage_title(st)}\ny (px)" if j == 0 else "")
            ax.grid(False)
    rows = " / ".join(stage_title(st) for st in present)
    _suptitle(fig, g, f"projected-gradient importance maps (mean map over seeds; rows: {rows}; "
                      "own colour scale per panel)")
    return fig


def _decade_scaled(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``(values / 10**p, p)`` with p the decade of the largest magnitude when it is below
    1e-2 or at least 1e4 (else p = 0): the colour bar then states the factor in its label
    instead of an offset text above it, which collides with the panel's title."""
    top = float(np.nanmax(np.abs(values))) if values.size else 0.0
    if not np.isfinite(top) or top == 0 or 1e-2 <= top < 1e4:
        return values, 0
    power = int(np.floor(np.log10(top)))
    return values / 10.0 ** power, power


@_styled
def erf_vs_receptive_field(df: pd.DataFrame, *, arch: str | None = None,
                           dataset: str | None = None, width: float | None = None
                           ) -> Figure | None:
    """ERF size (``erf_size`` of our importance units: the side of the centred square holding
    the mass fraction of the map) vs the analytic RF of the last conv (log-log), one line per
    checkpoint (mean, min-max band over seeds), with the analytic RF itself (ERF = RF, dashed)
    and the input size of the maps (dotted) for reference: how far the ERF falls short of the
    theoretical RF at each pool level, before and after training (Luo et al.). A point where
    some seed's ERF square reached past the maps' edge is hollow (``erf_size_censored``)."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    erf = select(g, metric="erf_size", protocol="default")
    flags = select(g, metric="erf_size_censored", protocol="default")
    stages = present_stages(erf, "importance")
    if not stages:
        return None
    fig, axes = _figure(1, 1, panel=(4.6, 3.6))
    ax = axes[0, 0]
    # cells of other input sizes (data.image_size / data.resize) are other lines, never
    # averaged into one receptive field's point
    sized = [(size, sub) for size, sub in erf.groupby(
        erf["image_size"].astype(object).where(erf["image_size"].notna(), None).astype(str)
        + " " + erf["resize"].astype(str), sort=True)]
    lines = [(st, size, sub[sub["stage"] == st]) for st in stages for size, sub in sized]
    cut = False
    for i, (st, size, d) in enumerate(x for x in lines if len(x[2])):
        piv = d.pivot_table(index="receptive_field", columns="seed", values="value",
                            aggfunc="mean").sort_index()
        mode = note_fields(d["note"].iloc[0]).get("mode", "")
        r = d.iloc[0]
        mean_band(ax, piv, OKABE_ITO[i % 8], MARKERS[i % 8],
                  stage_title(st) + (f" ({mode.split()[0]})" if mode else "")
                  + (f", {size_label(r['image_size'], r['resize'])}" if len(sized) > 1 else ""))
        cut |= mark_censored(ax, piv.mean(axis=1), censored_at(d, flags, "receptive_field"),
                             OKABE_ITO[i % 8], MARKERS[i % 8])
    rf = np.sort(erf["receptive_field"].dropna().unique().astype(float))
    ax.plot(rf, rf, color="0.3", ls="--", lw=1, label="analytic RF (r_max of the last conv)")
    sizes = {float(note_fields(n).get("input_size", "nan")) for n in erf["note"]}
    for s in sorted(x for x in sizes if x == x):
        ax.axhline(s, color="0.3", ls=":", lw=1, label=f"input size of the maps, {s:g} px")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("analytic receptive field of the last conv (px)")
    ax.set_ylabel("ERF size (px)")
    ax.legend(loc="best")
    _suptitle(fig, g, "effective vs analytic receptive field per pool level"
              + (f"\n({CUT_LABEL})" if cut else ""))
    return fig


@_styled
def layer_erf_profile(df: pd.DataFrame, *, arch: str | None = None,
                      dataset: str | None = None, width: float | None = None) -> Figure | None:
    """Per conv layer (forward order): the ERF size of its centre unit (``importance.per_layer``,
    solid, mean over seeds) beside its analytic r_max (dashed; an even one + 1, the smallest
    centred odd square that holds it, as the ERF size is one), one line pair per receptive
    field, one panel per checkpoint measured; log y. Luo et al.: the ERF grows like the
    square root of the depth while the analytic RF grows linearly. A layer where some seed's
    ERF square reached past the image's edge is hollow (``layer_erf_censored``)."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    e = select(g, metric="layer_erf_size")
    stages = present_stages(e, "importance")
    if not stages:
        return None
    r = select(g, metric="layer_r_max")
    flags = select(g, metric="layer_erf_censored")
    cut = False
    fig, axes = _panels(len(stages), panel=(4.4, 3.4))
    for ax, st in zip(axes, stages):
        for cell, label, colour, marker in _levels(g):
            d = e[(e["stage"] == st) & (e["cell"] == cell)]
            if d.empty:
                continue
            size = d.groupby("index")["value"].mean().sort_index()
            ax.plot(size.index.to_numpy(float), size.to_numpy(float), color=colour,
                    marker=marker, ms=3, lw=1.5, label=f"{label}, n={d['seed'].nunique()}")
            cut |= mark_censored(ax, size, censored_at(d, flags, "index",
                                                       ("run_id", "stage", "index")),
                                 colour, marker)
            own = r[(r["cell"] == cell) & (r["stage"] == "importance_rf")]  # one per run
            rm = (own if len(own) else r[(r["stage"] == st) & (r["cell"] == cell)]
                  ).groupby("index")["value"].mean()  # (older stores: in each importance unit)
            # as the ERF size measures it: the side of a centred square, odd; an even r_max
            # (a box between pixels) needs r_max + 1
            hull = rm.sort_index() + (rm.sort_index() % 2 == 0)
            ax.plot(hull.index.to_numpy(float), hull.to_numpy(float), color=colour,
                    ls="--", lw=1)
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        integer_ticks(ax.xaxis)
        ax.set_xlabel("conv layer (forward order)")
        ax.set_ylabel("px")
        ax.set_title(stage_title(st))
    handles, labels = axes[-1].get_legend_handles_labels()
    handles.append(Line2D([], [], color="grey", ls="--", lw=1))
    axes[-1].legend(handles, [*labels, "analytic r_max, +1 if even (same colour)"],
                       loc="best")
    _suptitle(fig, g, "ERF size of each conv layer's centre unit (solid) vs its analytic RF"
              + (f"\n({CUT_LABEL})" if cut else ""))
    return fig


@_styled
def pruning_curves(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                   width: float | None = None, criterion: str = "magnitude",
                   protocol: str = "default", prune_settings: str | None = None,
                   finetune_settings: str | None = None) -> Figure | None:
    """Test accuracy (%) vs pruning rate per receptive field, mean ± std band over seeds; the
    dense accuracy (of the checkpoint that was pruned) as a dashed line of the same colour.
    Panels: one-shot, fine-tuned (after the last epoch). The settings as in
    :func:`analysis.stats.pruning_rows` (several present and none chosen: ``ValueError``)."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    rows = pruning_rows(g, criterion=criterion, protocol=protocol,
                        prune_settings=prune_settings, finetune_settings=finetune_settings)
    pr = select(rows, metric="test_acc")
    pr = pr[pr["index"].isna()]
    present = [ft for ft in (False, True) if (pr["finetuned"] == ft).any()]
    if not present:
        return None
    dense = select(rows, metric="dense_test_acc")
    if dense.empty:  # results made before prune units recorded their checkpoint's accuracy
        dense = final_epoch(select(g, stage="train", metric="test_acc"))
    dense = dense.groupby("cell")["value"].mean() * 100
    fig, axes = _figure(1, len(present), panel=(4.2, 3.2))
    top = max(100 * float(pr["value"].max()), float(dense.max()) if len(dense) else 0.0)
    for ax, ft in zip(axes[0], present):
        for cell, label, colour, marker in _levels(g):
            s = (pr[(pr["cell"] == cell) & (pr["finetuned"] == ft)].groupby("prune_rate")["value"]
                 .agg(["mean", "std", "count"]).sort_index() * [100, 100, 1])
            if s.empty:
                continue
            x = s.index.to_numpy(float) * 100
            ax.plot(x, s["mean"], color=colour, marker=marker, ms=4,
                    label=f"{label}, n={int(s['count'].max())}")
            ax.fill_between(x, s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0),
                            color=colour, alpha=0.2, lw=0)
            if cell in dense.index:
                ax.axhline(dense[cell], color=colour, ls="--", lw=1)
        ax.set_ylim(0, min(100, top * 1.1 + 2))
        ax.set_xlabel("pruning rate (% of prunable weights)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("fine-tuned after pruning" if ft else "one-shot, no fine-tuning")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    handles.append(Line2D([], [], color="grey", ls="--", lw=1))
    axes[0, -1].legend(handles, [*labels, "dense (same colour)"], loc="lower left")
    _suptitle(fig, g, f"test accuracy after {criterion} pruning"
                      f"{settings_tag(prune_settings, finetune_settings)}"
                      f"{' (paper protocol)' if protocol == 'paper' else ''} (line = mean, "
                      "band = ± std over seeds)")
    return fig


@_styled
def size_curves(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                width: float | None = None) -> Figure | None:
    """"Size Matters": test accuracy (%) after training vs the input size the network was
    trained at (``data.image_size``), one line per pool level over the ``direct`` cells (mean,
    min-max band over seeds; log2 x); cells of other protocols (``down_up``, ``canvas``) as
    single points at their input size in their level's colour, one marker per protocol (the
    same at every level), labelled with the protocol; each level's r̃ (where the cell has its
    ``receptive_field`` rows) as a tick of its colour on the x axis. None unless the grid has
    at least two input sizes or protocols."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    if "image_size" not in g.columns:
        return None
    acc = final_epoch(select(g, stage="train", metric="test_acc"))
    acc = acc[acc["image_size"].notna()]
    kinds = acc[["image_size", "resize"]].astype(object).drop_duplicates()
    if len(kinds) < 2:
        return None
    resize = acc["resize"].fillna("direct").astype(str)
    protocol_marker = {kind: PROTOCOL_MARKERS[i % len(PROTOCOL_MARKERS)] for i, kind in
                       enumerate(sorted(set(resize) - {"direct"}))}
    r_tilde = select(g, metric="rf_min_feasible_input").groupby("pool_level")["value"].max()
    fig, axes = _figure(1, 1, panel=(5.0, 3.6))
    ax = axes[0, 0]
    levels = sorted(acc["pool_level"].dropna().unique())
    for i, level in enumerate(levels):
        colour, marker = OKABE_ITO[i % 8], MARKERS[i % 8]
        d = acc[(acc["pool_level"] == level) & (resize == "direct")]
        piv = d.pivot_table(index="image_size", columns="seed", values="value",
                            aggfunc="mean") * 100
        rf = d["receptive_field"].dropna()
        mixing = d["global_mixing"].iloc[0] if "global_mixing" in d.columns and len(d) else None
        label = f"pool {int(level)}" + (f" ({rf_label(int(rf.iloc[0]), mixing)})" if len(rf)
                                        else "")
        mean_band(ax, piv.sort_index(), colour, marker, label)
        for kind, k in acc[(acc["pool_level"] == level) & (resize != "direct")].groupby(
                resize[(acc["pool_level"] == level) & (resize != "direct")]):
            y = k.groupby("image_size")["value"].mean() * 100
            ax.scatter(y.index.to_numpy(float), y.to_numpy(float), color=colour,
                       marker=protocol_marker[kind], s=70, zorder=3,
                       label=f"pool {int(level)}, {kind}, n={k['seed'].nunique()}")
        if level in r_tilde.index:
            ax.plot([r_tilde[level]], [0], marker="|", ms=14, mew=2, color=colour,
                    clip_on=False, transform=ax.get_xaxis_transform())
    ax.set_xscale("log", base=2)
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("input size during training (px)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(loc="best")
    _suptitle(fig, g, "test accuracy vs training input size\n(ticks: r̃ per pool level; "
                      "other resize protocols: a marker each)")
    return fig


@_styled
def resolution_curves(df: pd.DataFrame, *, arch: str | None = None, dataset: str | None = None,
                      width: float | None = None) -> Figure | None:
    """Test accuracy (%) vs the input size a checkpoint is evaluated at (the ``resolution``
    stage), one line per receptive field (mean, min-max band over seeds), one panel per
    checkpoint; the training size (dotted) and each level's r̃ (``rf_min_feasible_input``,
    a tick of its colour on the x axis, where the cell has it) marked. A ``down_up`` or
    ``canvas`` run tested on plain resized images (``resolution.resize=direct``) is dashed:
    those are not its own protocol's images, not even at its training size."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    res = select(g, metric="resolution_test_acc")
    stages = present_stages(res, "resolution")
    if not stages:
        return None
    r_tilde = select(g, metric="rf_min_feasible_input").groupby("cell")["value"].first()
    train_sizes = {float(note_fields(n).get("train_size", "nan")) for n in res["note"]}
    trained = res["resize"].fillna("direct") if "resize" in res else "direct"
    tested = res["note"].map(lambda n: note_fields(n).get("eval_resize", "direct"))
    plain = set(res.loc[(trained != "direct") & (tested == "direct"), "cell"])
    fig, axes = _panels(len(stages), panel=(4.2, 3.2))
    for ax, st in zip(axes, stages):
        d = res[res["stage"] == st]
        for cell, label, colour, marker in _levels(g):
            piv = (d[d["cell"] == cell].pivot_table(index="index", columns="seed",
                                                     values="value", aggfunc="mean") * 100)
            mean_band(ax, piv.sort_index(), colour, marker,
                      label + (" (plain images)" if cell in plain else ""),
                      ls="--" if cell in plain else "-")
            if cell in r_tilde.index and not piv.empty:
                ax.plot([r_tilde[cell]], [0], marker="|", ms=14, mew=2, color=colour,
                        clip_on=False, transform=ax.get_xaxis_transform())
        for t in sorted(x for x in train_sizes if x == x):
            ax.axvline(t, color="0.3", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel("input size at test time (px)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(stage_title(st))
    legend_below(fig, axes)
    _suptitle(fig, g, "test accuracy vs test-time input size\n(dotted: training size; "
                      "ticks: r̃; band: min-max over seeds"
                      + ("; dashed: plain resized images, not the run's protocol"
                         if plain else "") + ")")
    return fig


@_styled
def receptive_field_profile(df: pd.DataFrame, *, arch: str | None = None,
                            dataset: str | None = None, width: float | None = None,
                            input_size: int | None = None) -> Figure | None:
    """Analytic r_max (px, log scale) vs layer index per pool level, the border layer (first
    unproductive layer) starred, and the input size as a dotted line, one per size:
    ``input_size``, or by default each ``input_size=<n>`` of the receptive_field rows' notes
    (each line labelled in px at the right edge where the cells differ in size)."""
    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    rf = select(g, stage="receptive_field", metric="rf_r_max")
    if rf.empty:
        return None
    if input_size is None:
        found = [re.search(r"input_size=(\d+)", n) for n in rf["note"].dropna()]
        sizes = sorted({int(m.group(1)) for m in found if m})
    else:
        sizes = [input_size]
    border = select(g, stage="receptive_field", metric="rf_border", value=1.0)
    names = _ordered_union([list(r["layer"]) for _, r in rf.groupby("cell", sort=False)])
    pos = {name: i for i, name in enumerate(names)}
    fig, axes = _figure(1, 1, panel=(6.4, 4.0))
    ax = axes[0, 0]
    for cell, label, colour, marker in _levels(g):
        r = rf[rf["cell"] == cell]
        if r.empty:
            continue
        x, y = r["layer"].map(pos).to_numpy(int), r["value"].to_numpy(float)
        ax.plot(x, y, color=colour, marker=marker, ms=4, label=label)
        b = r["layer"].isin(list(border[border["cell"] == cell]["layer"])).to_numpy(bool)
        ax.scatter(x[b], y[b], marker="*", s=180, color=colour, edgecolor="black", zorder=3)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", ls="", ms=12, color="grey", markeredgecolor="black"))
    labels.append("border layer (first unproductive)")
    for size in sizes:
        ax.axhline(size, color="black", ls=":", lw=1.2)
        if len(sizes) > 1:
            ax.text(1, size, f"{size} px", transform=ax.get_yaxis_transform(), ha="right",
                    va="bottom", fontsize=8)
    if sizes:
        handles.append(Line2D([], [], color="black", ls=":"))
        labels.append(f"input size{'s' if len(sizes) > 1 else ''} "
                      f"({', '.join(map(str, sizes))} px)")
    ax.set_yscale("log", base=2)
    _plain_log_ticks(ax.yaxis)
    ax.set_xticks(range(len(names)))
    if len(names) <= 24:
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("layer with a local RF (conv, pool, linear, windowed attention; input to output)")
    ax.set_ylabel("receptive field r_max (px)")
    ax.legend(handles, labels, loc="upper left")
    _suptitle(fig, g, "analytic receptive field per layer"
              + ("" if sizes else " (input size not recorded)"))
    return fig


@_styled
def receptive_field_states(df: pd.DataFrame, *, arch: str | None = None,
                           dataset: str | None = None, width: float | None = None
                           ) -> Figure | None:
    """The RFA-style drawing (:func:`landscape.receptive_field.drawing.draw_receptive_field`)
    of every pool level of a grid, one panel each: r_min .. r_max per layer coloured
    productive / underutilised / unproductive / head at the cell's input size, r̃ dotted.
    From the receptive_field stage's rows; None when they lack ``rf_underutilised`` (results
    written before it was recorded)."""
    from landscape.receptive_field.analytic import layer_states, trunk_rows
    from landscape.receptive_field.drawing import STATE_COLOURS, draw_receptive_field

    g = grid_frame(df, arch=arch, dataset=dataset, width=width)
    rf = select(g, stage="receptive_field")
    if rf.empty or not (rf["metric"] == "rf_underutilised").any():
        return None
    levels = [lv for lv in _levels(g) if (rf["cell"] == lv[0]).any()]
    fig, axes = _figure(len(levels), 1, panel=(max(6.4, 0.16 * rf["layer"].nunique()), 3.4))
    per_layer = ("rf_r_min", "rf_r_max", "rf_unproductive", "rf_underutilised", "rf_border")
    drawn: set[str] = set()
    for ax, (cell, label, _, _) in zip(axes[:, 0], levels):
        r = rf[(rf["cell"] == cell) & rf["metric"].isin(per_layer) & rf["layer"].notna()]
        r_tilde = rf.loc[(rf["cell"] == cell) & (rf["metric"] == "rf_min_feasible_input"),
                         "value"]
        wide = r.pivot_table(index="layer", columns="metric", values="value", sort=False)
        order = list(dict.fromkeys(r["layer"]))
        wide = wide.reindex(order)
        table = pd.DataFrame({
            "layer": order, "r_min": wide["rf_r_min"].to_numpy(),
            "r_max": wide["rf_r_max"].to_numpy(),
            "is_global": wide["rf_r_max"].isna().to_numpy(),
            **{c: wide[f"rf_{c}"].fillna(0).astype(bool).to_numpy()
               for c in ("unproductive", "underutilised", "border")}}).reset_index(drop=True)
        found = [re.search(r"input_size=(\d+)", n) for n in r["note"].dropna()]
        size = next((int(m.group(1)) for m in found if m), None)
        if size is None:
            continue
        draw_receptive_field(table, size, ax=ax, legend=False, title=label,
                             r_tilde=int(r_tilde.iloc[0]) if len(r_tilde) else None)
        drawn.update(layer_states(table[trunk_rows(table)]))
    handles = [Patch(color=c, label=s) for s, c in STATE_COLOURS.items() if s in drawn]
    handles += [Line2D([], [], color="black", ls="--", label="input size"),
                Line2D([], [], color="#0072B2", ls=":", label="r\u0303 (min. feasible input)")]
    axes[0, 0].legend(handles=handles, loc="upper left", fontsize=7, ncol=3)
    _suptitle(fig, g, "RF per layer (r_min .. r_max), state at the input size;\n"
              "outlined: the border layer")
    return fig


def _ordered_union(lists: Sequence[Sequence[str]]) -> list[str]:
    """Merge name lists keeping each list's order (a name missing from one list, e.g. the RF
    pool at level 0, goes right after its predecessor in the list that has it)."""
    out: list[str] = []
    for names in lists:
        for i, name in enumerate(names):
            if name not in out:
                out.insert(out.index(names[i - 1]) + 1 if i else 0, name)
    return out
