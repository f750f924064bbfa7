"""The RFA-style picture of an architecture at one input size (:func:`draw_receptive_field`).

One bar per layer of :func:`~landscape.receptive_field.receptive_field_table`, in forward
order, spanning the layer's r_min .. r_max (log scale), coloured by its state at the input
size: productive, underutilised (its own r_min exceeds the input), unproductive (its input's
r_min already covers the input; from the border layer on), or head (global RF). The input size
and r̃ are drawn as horizontal lines, the border layer as a vertical one through its bar.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from landscape.receptive_field.analytic import STATES, layer_states, trunk_rows
from landscape.storage import atomic_write

# Okabe-Ito (colour-blind safe).
STATE_COLOURS = dict(zip(STATES, ("#009E73", "#E69F00", "#D55E00", "#56B4E9", "#999999")))
FORMATS = (".png", ".svg", ".pdf")
_MAX_NAMED = 48  # more layers than this: every k-th name on the axis


def draw_receptive_field(table: pd.DataFrame, input_size: int, *, title: str | None = None,
                         r_tilde: int | None = None, ax: Axes | None = None,
                         legend: bool = True) -> Figure:
    """Figure of ``table`` (one :func:`receptive_field_table` at ``input_size``, or any frame
    with its ``layer, r_min, r_max, is_global, unproductive, underutilised, border`` columns);
    ``r_tilde`` (r̃) is drawn where given; into ``ax`` when given (the figure is ``ax``'s).
    Head layers are drawn as a grey bar at the top of the axis, layers that mix globally inside
    the network (attention and the blocks after it) as a blue bar from their local path's
    r_min to the top; global rows followed by local ones (squeeze-and-excitation branches)
    are left out."""
    if table.empty:
        raise ValueError("the receptive-field table has no layers to draw")
    table = table[trunk_rows(table)].reset_index(drop=True)
    states = layer_states(table)
    local = ~table["is_global"].to_numpy(bool)
    r_max = pd.to_numeric(table["r_max"], errors="coerce")
    r_min = pd.to_numeric(table["r_min"], errors="coerce")
    top = max(float(r_max[local].max()) if local.any() else input_size, input_size,
              r_tilde or 0) * 2.0
    n = len(table)
    if ax is None:
        fig = Figure(figsize=(min(4 + 0.18 * n, 24), 4.8))  # no pyplot: no global state
        ax = fig.add_subplot()
    for i, state in enumerate(states):
        lo, hi = ((r_min.iloc[i], r_max.iloc[i]) if local[i] else
                  (r_min.iloc[i], top) if pd.notna(r_min.iloc[i]) else (top / 1.6, top))
        hi = max(hi, lo * 1.06)  # r_min = r_max: a thin bar, still visible
        ax.bar(i, hi - lo, bottom=lo, width=0.8, color=STATE_COLOURS[state],
               edgecolor="black" if table["border"].iloc[i] else "none", linewidth=1.2)
        if local[i]:
            ax.plot([i - 0.4, i + 0.4], [lo, lo], color="black", linewidth=0.8)
    ax.axhline(input_size, color="black", linestyle="--", linewidth=1,
               label=f"input {input_size} px")
    if r_tilde is not None:
        ax.axhline(r_tilde, color="#0072B2", linestyle=":", linewidth=1.4,
                   label=f"r\u0303 = {r_tilde} px")
    border = table.index[table["border"].to_numpy(bool)]
    if len(border):
        b = table.index.get_loc(border[0])
        ax.axvline(b, color="#D55E00", linewidth=1, label=f"border: {table['layer'].iloc[b]}")
    ax.set_yscale("log")
    ax.set_ylim(1, top * 1.1)
    ax.set_xlim(-0.8, n - 0.2)
    step = 1 if n <= _MAX_NAMED else -(-n // _MAX_NAMED)
    ax.set_xticks(range(0, n, step))
    ax.set_xticklabels(table["layer"].iloc[::step], rotation=90, fontsize=6)
    ax.set_ylabel("receptive field r_min .. r_max (px)")
    if legend:
        handles = [Patch(color=c, label=s) for s, c in STATE_COLOURS.items() if s in states]
        lines, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + lines, fontsize=7, loc="upper left", ncol=2)
    ax.set_title(title or f"receptive field per layer at {input_size} px", fontsize=9)
    if ax.figure.get_layout_engine() is None:
        ax.figure.tight_layout()
    return ax.figure


def save_drawing(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` to ``path`` (.png, .svg or .pdf) through a temporary file (no half-written
    drawing is ever left at ``path``)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"draw={str(path)!r}: the file must end in one of {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise ValueError(f"draw={str(path)!r}: folder {str(path.parent)!r} does not exist")
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:].lower(), dpi=150))
    return path
