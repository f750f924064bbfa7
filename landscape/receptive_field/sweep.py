"""Receptive field of one architecture across its RF-pool levels (:func:`rf_sweep_table`;
:func:`rf_sweep` also keeps each level's model and layer table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
from torch import nn

from landscape.models import InputTooSmallError, check_input_size, create_model
from landscape.models.spec import ModelSpec
from landscape.receptive_field.analytic import (
    feasible_input_of, receptive_field_table, square_input_size,
)
from landscape.receptive_field.padding import padding_only_share

SWEEP_COLUMNS = (
    "level", "kernel", "stride", "padding", "r_max", "r_min", "r_tilde", "params",
    "feature_size", "fits",
    "border_layer", "n_unproductive", "padding_only",
)


@dataclass(frozen=True)
class LevelAnalysis:
    """One RF-pool level of a sweep: the model built at it, its receptive-field table and
    its row of :func:`rf_sweep_table`."""

    level: int
    model: nn.Module
    table: pd.DataFrame
    row: dict[str, Any]


def rf_sweep(
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
    convention: str = "rfa",
    se_gates: str = "scale",
) -> list[LevelAnalysis]:
    """Each level of ``levels`` (a repeated level once, in order) analysed once: its model,
    its :func:`receptive_field_table` (``convention``, ``se_gates``) and its sweep row (the
    columns of :func:`rf_sweep_table`), so that a caller that also wants the layer tables
    traces each level once."""
    n = square_input_size(input_size)
    if isinstance(levels, (int, str)) or not len(levels):
        raise ValueError(f"levels must be a non-empty sequence of pool levels, got {levels!r}")
    out = []
    for level in dict.fromkeys(levels):  # a level named twice is one row
        model = create_model(
            arch, num_classes=num_classes, in_channels=in_channels, pool_level=level,
            width=width, pool_kernel=pool_kernel, pool_stride=pool_stride,
            pool_padding=pool_padding, spec=spec,
        )
        table = receptive_field_table(model, n, convention=convention, se_gates=se_gates)
        out.append(LevelAnalysis(level, model, table,
                                 _sweep_row(level, model, table, n, in_channels)))
    return out


def _sweep_row(level: int, model: nn.Module, table: pd.DataFrame, n: int,
               in_channels: int) -> dict[str, Any]:
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
    return {
        "level": level, "kernel": pool.kernel, "stride": pool.stride, "padding": pool.padding,
        "r_max": last["r_max"], "r_min": last["r_min"],
        "r_tilde": max(r_tilde.h, r_tilde.w),
        "params": sum(p.numel() for p in model.parameters()),
        "feature_size": last["out_size"] if fits else pd.NA, "fits": fits,
        "border_layer": border.iloc[0] if len(border) else None,
        "n_unproductive": int(table["unproductive"].sum()),
        "padding_only": padding_only_share(model, n, in_channels) if fits else pd.NA,
    }


def sweep_frame(analyses: Sequence[LevelAnalysis]) -> pd.DataFrame:
    """The rows of :func:`rf_sweep` as the :func:`rf_sweep_table` frame."""
    df = pd.DataFrame([a.row for a in analyses], columns=list(SWEEP_COLUMNS))
    for col in ("level", "kernel", "stride", "padding", "r_max", "r_min", "r_tilde", "params",
                "feature_size", "n_unproductive"):
        df[col] = df[col].astype("Int64")
    return df


def rf_sweep_table(arch: str, *, input_size: int, levels: Sequence[int] = (0, 1, 2, 3, 4),
                   **kw: Any) -> pd.DataFrame:
    """One row per RF-pool level of ``arch`` for ``input_size`` (pixels), in the order of
    ``levels`` (a repeated level once); the other keywords are those of :func:`rf_sweep`
    (``width``, ``num_classes``, ``in_channels``, ``pool_kernel/stride/padding``, ``spec``:
    the architecture's knobs, None: the paper's model; ``convention``, ``se_gates``).

    Columns: ``level``; the pool's ``kernel, stride, padding`` (kernel 0 = no pool);
    ``r_max, r_min`` at the last conv (the one with the largest r_max: a ResNet's
    projection shortcut may run later but sees less); ``r_tilde``: r̃, the largest r_min over
    all layers (the larger axis; :func:`~landscape.receptive_field.min_feasible_input`);
    ``params`` (trainable + frozen parameter count);
    ``feature_size``: spatial size of the last conv's output (NA when the pool shrinks the map
    to nothing, see ``fits``); ``fits``: the model accepts this input size
    (no :class:`~landscape.models.InputTooSmallError`); ``border_layer``: name of the border
    layer or None; ``n_unproductive``: number of unproductive layers; ``padding_only``: the
    share of the conv and linear weights that only ever multiply zero padding at this input
    size (no path to the input: :mod:`landscape.receptive_field.padding`; NA unless ``fits``).
    """
    return sweep_frame(rf_sweep(arch, input_size=input_size, levels=levels, **kw))


def format_sweep_table(df: pd.DataFrame) -> str:
    """Plain-text table of :func:`rf_sweep_table` ("vanishes" / "-" for missing values)."""
    shown = df.astype(object)
    shown["feature_size"] = [
        "vanishes" if pd.isna(v) else str(v) for v in df["feature_size"]
    ]
    shown["border_layer"] = ["-" if v is None or pd.isna(v) else v for v in df["border_layer"]]
    shown["padding_only"] = ["-" if pd.isna(v) else f"{100 * v:.1f}%" for v in df["padding_only"]]
    return shown.drop(columns=["fits"]).to_string(index=False)
