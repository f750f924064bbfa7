"""Receptive field of one architecture across its RF-pool levels (:func:`rf_sweep_table`)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from landscape.models import InputTooSmallError, check_input_size, create_model
from landscape.models.spec import ModelSpec
from landscape.receptive_field.analytic import (
    feasible_input_of, receptive_field_table, square_input_size,
)

SWEEP_COLUMNS = (
    "level", "kernel", "stride", "padding", "r_max", "r_min", "r_tilde", "params",
    "feature_size", "fits",
    "border_layer", "n_unproductive",
)


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
    spec: ModelSpec | None = None,
) -> pd.DataFrame:
    """One row per RF-pool level of ``arch`` for ``input_size`` (pixels), in the order of
    ``levels`` (a repeated level once); ``spec``: the architecture's knobs (None: the
    paper's model).

    Columns: ``level``; the pool's ``kernel, stride, padding`` (kernel 0 = no pool);
    ``r_max, r_min`` at the last conv (the one with the largest r_max: a ResNet's
    projection shortcut may run later but sees less); ``r_tilde``: r̃, the largest r_min over
    all layers (the larger axis; :func:`~landscape.receptive_field.min_feasible_input`);
    ``params`` (trainable + frozen parameter count);
    ``feature_size``: spatial size of the last conv's output (NA when the pool shrinks the map
    to nothing, see ``fits``); ``fits``: the model accepts this input size
    (no :class:`~landscape.models.InputTooSmallError`); ``border_layer``: name of the border
    layer or None; ``n_unproductive``: number of unproductive layers.
    """
    n = square_input_size(input_size)
    if isinstance(levels, (int, str)) or not len(levels):
        raise ValueError(f"levels must be a non-empty sequence of pool levels, got {levels!r}")
    rows = []
    for level in dict.fromkeys(levels):  # a level named twice is one row
        model = create_model(
            arch, num_classes=num_classes, in_channels=in_channels, pool_level=level,
            width=width, pool_kernel=pool_kernel, pool_stride=pool_stride,
            pool_padding=pool_padding, spec=spec,
        )
        table = receptive_field_table(model, n)
        r_tilde = feasible_input_of(table)
        convs = table[(table["kind"] == "conv") & table["r_max"].notna()]
        last = convs.loc[convs["r_max"] == convs["r_max"].max()].iloc[-1]  # deepest conv
        try:
            check_input_size(model, n)
            fits = True
        except InputTooSmallError:
            fits = False
        border = table.loc[table["border"], "layer"]
        pool = model.pool_spec
        rows.append({
            "level": level, "kernel": pool.kernel, "stride": pool.stride, "padding": pool.padding,
            "r_max": last["r_max"], "r_min": last["r_min"],
            "r_tilde": max(r_tilde.h, r_tilde.w),
            "params": sum(p.numel() for p in model.parameters()),
            "feature_size": last["out_size"] if fits else pd.NA, "fits": fits,
            "border_layer": border.iloc[0] if len(border) else None,
            "n_unproductive": int(table["unproductive"].sum()),
        })
    df = pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))
    for col in ("level", "kernel", "stride", "padding", "r_max", "r_min", "r_tilde", "params",
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
