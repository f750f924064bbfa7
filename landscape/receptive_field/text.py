"""Plain-text views of the receptive-field tables for the terminal (``landscape-rf``)."""

from __future__ import annotations

import pandas as pd

from landscape.receptive_field.analytic import (
    FeasibleInput, layer_states, mixes_globally, trunk_rows,
)
from landscape.receptive_field.cost import ModelCost

LAYER_VIEW = ("layer", "kind", "kernel", "stride", "jump", "r_min", "r_max", "out_size", "state")


def _na(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype(object).where(df.notna(), "-")


def format_layer_table(table: pd.DataFrame) -> str:
    """The columns of :data:`LAYER_VIEW` of a receptive-field table (``state``: productive,
    underutilised, unproductive or head; ``*``: the border layer); rectangular windows as
    ``h x w``; a jump as a whole number where it is one (a resize or uneven adaptive pooling
    makes the column float), else to 4 decimals. Global rows followed by local ones
    (squeeze-and-excitation branches) are left out and counted in a last line."""
    shown = trunk_rows(table)
    view = table.copy()
    for col in ("kernel", "jump", "r_min", "r_max"):
        h, w = (f"{col}_h", f"{col}_w")
        view[col] = [f"{_num(a)}x{_num(b)}" if pd.notna(a) and pd.notna(b) and a != b
                     else _num(v) for v, a, b in zip(view[col].astype(object), view[h], view[w])]
    view["state"] = [s + (" *" if b else "")
                     for s, b in zip(layer_states(table), table["border"])]
    text = _na(view.loc[shown, list(LAYER_VIEW)]).to_string(index=False)
    hidden = int((~shown).sum())
    return text + (f"\n({hidden} global rows inside the network, e.g. squeeze-and-excitation "
                   "branches, not shown; they are in rf_layers.csv)" if hidden else "")


def _num(v):
    """A float as text, whole numbers without decimals, others to 4 (the column then stays
    text: a list of ints and floats would become floats again); NA and ints as they are."""
    if isinstance(v, float) and not pd.isna(v):
        return f"{int(v)}" if v.is_integer() else f"{v:.4f}".rstrip("0").rstrip(".")
    return v


def _flops(flops: int) -> str:
    return f"{flops / 1e9:.3g} GFLOPs" if flops >= 1e8 else f"{flops / 1e6:.3g} MFLOPs"


def format_summary(name: str, table: pd.DataFrame, cost: ModelCost, r_tilde: FeasibleInput,
                   n: int, convention: str) -> str:
    """Header lines: parameters, FLOPs, r̃ and the layers' states at input size ``n``."""
    where = (f"reached at {r_tilde.layer_h}" if r_tilde.layer_h == r_tilde.layer_w else
             f"H at {r_tilde.layer_h}, W at {r_tilde.layer_w}")
    size = r_tilde.size if isinstance(r_tilde.size, int) else f"{r_tilde.h}x{r_tilde.w} (HxW)"
    unprod = int(table["unproductive"].sum())
    border = table.loc[table["border"], "layer"]
    cmp = ">" if convention == "rfa" else ">="
    both = int((table["underutilised"] & table["unproductive"]).sum())
    status = ("fully utilised" if not table["underutilised"].any() else
              f"NOT fully utilised: {int(table['underutilised'].sum())} underutilised "
              f"layer(s) (r_min {cmp} {n}{f', {both} of them unproductive' if both else ''})")
    lines = [
        f"{name}: {cost.params:,} parameters, {_flops(cost.flops)} per "
        f"{cost.in_channels}x{n}x{n} image (2 x multiply-accumulates of conv/linear/matmul)",
        f"minimal feasible input r\u0303 = {size} px ({where})",
        f"at {n} px: {status}; {unprod} unproductive (input r_min >= {n}); border layer: "
        f"{border.iloc[0] if len(border) else '-'}",
    ]
    shown = table[trunk_rows(table)]
    states = layer_states(shown)
    if mixes_globally(table) and "global" in states:
        first = shown["layer"].iloc[states.index("global")]
        lines.append(f"global mixing from {first} on (attention or a token-mixing MLP): every "
                     "position sees the whole input there (state 'global'; its r_min is that "
                     "of the local path beside it, a residual)")
    return "\n".join(lines)


def format_proposals(df: pd.DataFrame) -> str:
    """The refinement proposals (:func:`~landscape.receptive_field.refine.proposals_table`)."""
    view = df.copy()
    view["params_change"] = [f"{v:+.1%}" if pd.notna(v) else "-" for v in df["params_change"]]
    view["flops"] = [_flops(int(v)) if pd.notna(v) else "-" for v in df["flops"]]
    view["width"] = [f"{v:.4g}" if pd.notna(v) else "-" for v in df["width"]]
    view["padding_only"] = [f"{v:.1%}" if pd.notna(v) else "-" for v in df["padding_only"]]
    view["change"] = [c if e is None or pd.isna(e) else f"{c}: cannot ({e})"
                      for c, e in zip(df["change"], df["error"])]
    return _na(view.drop(columns=["error"])).to_string(index=False)
