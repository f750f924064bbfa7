"""Analytic receptive field per layer: r_min / r_max, unproductive and border layers, sweeps.

Definitions (n = input size in pixels, one axis; layers are square):

* r_max / r_min of a tensor: largest / smallest RF over all input-to-tensor paths
  (Araujo et al., Distill 2019; Richter & Pal, rfa-toolbox), e.g. a residual block with two
  3x3 convs on its main path and an identity shortcut keeps r_min and grows r_max.
* A layer is *unproductive* for input size n when the minimum RF of its input is already at
  least n: ``input_r_min >= n``. This is rfa-toolbox's test (``EnrichedNetworkNode.is_border``:
  ``input_resolution <= receptive_field_min`` of every predecessor); the layer cannot integrate
  context that is not already available to every path.
* The *border layer* is the first unproductive layer in forward order (so every layer is
  productive before it). We use ``>=`` for both so that the two notions agree; at equality the
  input RF covers the image exactly.
* A layer is *underutilised* when its own output ``r_min > n`` (rfa-toolbox's "critical").
* Head layers, whose output RF is the whole input (global pooling, Linear, anything after
  them), are reported with ``is_global = True`` and NA sizes and are never flagged.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
from torch import nn

from landscape.models import InputTooSmallError, check_input_size, create_model
from landscape.receptive_field.geometry import (
    Geometry, LayerRecord, Unsupported, UnsupportedModelError,
)
from landscape.receptive_field.graph import propagate, trace_model

TABLE_COLUMNS = (
    "layer", "kind", "kernel", "stride", "padding", "dilation", "jump", "r_min", "r_max",
    "input_r_min", "effective_padding", "center", "in_size", "out_size", "is_global",
    "unproductive", "border", "underutilised",
)
SWEEP_COLUMNS = (
    "level", "kernel", "stride", "padding", "r_max", "r_min", "params", "feature_size", "fits",
    "border_layer", "n_unproductive",
)
_INT_COLUMNS = ("kernel", "stride", "padding", "dilation", "jump", "r_min", "r_max",
                "input_r_min", "effective_padding", "in_size", "out_size")


def layer_records(model: nn.Module, input_size: int | None = None) -> list[LayerRecord]:
    """Conv/pool/linear records of ``model`` in forward order (see :mod:`.graph`)."""
    return propagate(trace_model(model), input_size)[1]


def _check_input_size(input_size: object) -> int:
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        if input_size[0] != input_size[1]:
            raise ValueError(f"input_size must be square for the RF analysis, got {input_size}")
        input_size = input_size[0]
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive integer (pixels), got {input_size!r}")
    return input_size


def _finite(x: float) -> int | None:
    return int(x) if math.isfinite(x) else None


def _row(rec: LayerRecord, n: int) -> dict[str, object]:
    if isinstance(rec.out, Unsupported):
        raise UnsupportedModelError(rec.out.reason)
    inp = rec.inp if isinstance(rec.inp, Geometry) else None
    out = rec.out if isinstance(rec.out, Geometry) else None
    local = out is not None and out.is_local
    in_r_min = _finite(inp.r_min) if inp is not None else None
    r_min = _finite(out.r_min) if out is not None else None
    unproductive = local and in_r_min is not None and in_r_min >= n
    return {
        "layer": rec.name, "kind": rec.kind, "kernel": rec.kernel, "stride": rec.stride,
        "padding": rec.padding, "dilation": rec.dilation,
        "jump": out.jump if local else None, "r_min": r_min,
        "r_max": _finite(out.r_max) if out is not None else None, "input_r_min": in_r_min,
        "effective_padding": -out.lo if local else None,
        "center": (out.lo + out.hi) / 2 if local else math.nan,
        "in_size": inp.size if inp is not None and inp.is_local else None,
        "out_size": out.size if local else None,
        "is_global": not (out is not None and math.isfinite(out.r_max)),
        "unproductive": unproductive, "border": False,
        "underutilised": local and r_min is not None and r_min > n,
    }


def receptive_field_table(model: nn.Module, input_size: int | tuple[int, int]) -> pd.DataFrame:
    """One row per conv/pool/linear op of ``model``, in forward order.

    Columns (sizes in input pixels along one axis; NA where undefined):

    * ``layer``: module path (fx node name for functional ops); ``kind``: conv, max_pool,
      avg_pool, adaptive_avg_pool, adaptive_max_pool, global_avg_pool or linear;
    * ``kernel, stride, padding, dilation``: the op's own settings (padding = left/top);
    * ``jump``: distance in input pixels between neighbouring output positions (effective
      stride, Araujo's S);
    * ``r_min, r_max``: min / max RF of the output over all paths; NA when global;
    * ``input_r_min``: r_min of the op's input (what "unproductive" tests);
    * ``effective_padding``: Araujo's P; output position u covers the input pixels
      ``[u*jump - P, u*jump - P + span - 1]`` (span = r_max when all paths are centred alike);
    * ``center``: input coordinate of the RF centre of output position 0 (``u*jump + center``
      for position u); ``in_size, out_size``: spatial sizes of input and output (0 = vanished);
    * ``is_global``: some path sees the whole input (global pooling, Linear and later);
    * ``unproductive``: ``input_r_min >= input_size``; ``border``: True on the first
      unproductive layer only; ``underutilised``: ``r_min > input_size``.

    Raises :class:`UnsupportedModelError` naming the module when the model cannot be traced or
    a reported layer depends on an op whose effect on the RF is unknown.
    """
    n = _check_input_size(input_size)
    rows = [_row(rec, n) for rec in layer_records(model, n)]
    for row in rows:
        if row["unproductive"]:
            row["border"] = True
            break
    df = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for col in _INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    df["center"] = df["center"].astype(float)
    for col in ("is_global", "unproductive", "border", "underutilised"):
        df[col] = df[col].astype(bool)
    return df


def _last_conv(records: list[LayerRecord]) -> LayerRecord:
    convs = [r for r in records if r.kind == "conv"]
    if not convs:
        raise ValueError("the model has no Conv2d layer, so it has no last-conv receptive field")
    last = convs[-1]
    if isinstance(last.out, Unsupported):
        raise UnsupportedModelError(last.out.reason)
    return last


def max_receptive_field(model: nn.Module) -> int:
    """r_max (pixels) at the last Conv2d in forward order; independent of the input size."""
    last = _last_conv(layer_records(model, None))
    if not (isinstance(last.out, Geometry) and math.isfinite(last.out.r_max)):
        raise ValueError(f"the last conv '{last.name}' sees the whole input (it follows global "
                         "pooling or a Linear); it has no finite receptive field")
    return int(last.out.r_max)


def rf_sweep_table(
    arch: str,
    *,
    input_size: int,
    levels: Sequence[int] = (0, 1, 2, 3, 4),
    width: float = 1.0,
    num_classes: int = 10,
    in_channels: int = 3,
    pool_kernel: int | None = None,
    pool_stride: int | None = None,
    pool_padding: int | None = None,
) -> pd.DataFrame:
    """One row per RF-pool level of ``arch`` for ``input_size`` (pixels), in the order of
    ``levels`` (a repeated level once).

    Columns: ``level``; the pool's ``kernel, stride, padding`` (kernel 0 = no pool);
    ``r_max, r_min`` at the last conv; ``params`` (trainable + frozen parameter count);
    ``feature_size``: spatial size of the last conv's output (NA when the pool shrinks the map
    to nothing, see ``fits``); ``fits``: the model accepts this input size
    (no :class:`~landscape.models.InputTooSmallError`); ``border_layer``: name of the border
    layer or None; ``n_unproductive``: number of unproductive layers.
    """
    n = _check_input_size(input_size)
    if isinstance(levels, (int, str)) or not len(levels):
        raise ValueError(f"levels must be a non-empty sequence of pool levels, got {levels!r}")
    rows = []
    for level in dict.fromkeys(levels):  # a level named twice is one row
        model = create_model(
            arch, num_classes=num_classes, in_channels=in_channels, pool_level=level,
            width=width, pool_kernel=pool_kernel, pool_stride=pool_stride,
            pool_padding=pool_padding,
        )
        table = receptive_field_table(model, n)
        last = table[table["kind"] == "conv"].iloc[-1]
        try:
            check_input_size(model, n)
            fits = True
        except InputTooSmallError:
            fits = False
        border = table.loc[table["border"], "layer"]
        spec = model.pool_spec
        rows.append({
            "level": level, "kernel": spec.kernel, "stride": spec.stride, "padding": spec.padding,
            "r_max": last["r_max"], "r_min": last["r_min"],
            "params": sum(p.numel() for p in model.parameters()),
            "feature_size": last["out_size"] if fits else pd.NA, "fits": fits,
            "border_layer": border.iloc[0] if len(border) else None,
            "n_unproductive": int(table["unproductive"].sum()),
        })
    df = pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))
    for col in ("level", "kernel", "stride", "padding", "r_max", "r_min", "params",
                "feature_size", "n_unproductive"):
        df[col] = df[col].astype("Int64")
    return df


def format_sweep_table(df: pd.DataFrame) -> str:
    """Plain-text table of :func:`rf_sweep_table` ("vanishes" / "-" for missing values)."""
    shown = df.astype(object)
    shown["feature_size"] = [
        "vanishes" if pd.isna(v) else str(v) for v in df["feature_size"]
    ]
    shown["border_layer"] = ["-" if v is None or pd.isna(v) else v for v in df["border_layer"]]
    return shown.drop(columns=["fits"]).to_string(index=False)
