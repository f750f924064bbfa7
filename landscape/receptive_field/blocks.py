"""Sliding blocks: ``nn.Unfold`` / ``F.unfold`` (im2col), and ``nn.Fold`` / ``F.fold`` refused.

Unfold stacks the k x k window of every position (kernel, stride, padding, dilation as a
conv's) into the channels, ``(N, C, H, W) -> (N, C k k, L)``, and flattens the positions into
the last dimension, row-major: each of the L positions sees its window, as a conv's output
does (the RF of a position is the union over its channels, here the taps). A fold sums the
taps back, each at its own position: where they go is not recorded (a block is one
position), so it is refused by name.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from landscape.receptive_field import tensor_ops as T
from landscape.receptive_field.context import Ctx, Rule
from landscape.receptive_field.geometry import (
    GLOBAL, Geometry, Skip, State, Window, arg, pair,
)

Result = tuple[State, "dict[str, Any] | None"]
_C = (("c", 0, None),)


def _window(ctx: Ctx) -> Window:
    """The unfold's window, from its module or from ``F.unfold(x, k, dilation, padding,
    stride)``."""
    mod, node, where = ctx.mod, ctx.node, ctx.where
    names = (("kernel_size", None), ("dilation", 1), ("padding", 0), ("stride", 1))
    if mod is not None:
        values = [getattr(mod, name) for name, _ in names]
    else:
        values = [ctx.resolve(arg(node, 1 + i, name, default))
                  for i, (name, default) in enumerate(names)]
    k, d, p, s = (pair(v, name, where) for v, (name, _) in zip(values, names))
    return Window("unfold", k, s, p, d)


def unfold(ctx: Ctx) -> Result:
    """The window of every position, positions flattened into the last dimension; a row of
    kind ``unfold``."""
    window = _window(ctx)
    x = ctx.x
    if not (isinstance(x, Geometry) and x.is_local):
        return GLOBAL, window.fields(("h", "w"))
    axes = T.last_axes(x, 2, ctx.where)
    out = window.apply(x, axes)
    sizes = [out.axis(a).size for a in axes]
    if None in sizes:
        raise Skip(f"{ctx.where} unfolds a map of unknown size: its positions cannot be "
                   "flattened")
    positions = tuple((a, 1, n) for a, n in zip(axes, sizes))
    layout = x.layout[:-3] + (_C, positions)
    return Geometry(out.h, out.w, layout), window.fields(axes)


def fold(ctx: Ctx) -> Result:
    """Refused: a fold puts every tap of a block back at its own position, so the RF of an
    output position depends on whether the taps were mixed after the unfold (VOLO's outlook
    attention mixes them: the RF grows by the window again; an element-wise op does not: it
    does not grow), which the layout of a block's channels does not record."""
    raise Skip(f"{ctx.where} folds blocks back into a map; the RF analysis keeps only the "
               "union of a block's taps, not where each tap goes back, so it cannot follow "
               "a fold (VOLO's outlook attention)")


MODULE_RULES: list[tuple[Any, Rule]] = [(nn.Unfold, unfold), (nn.Fold, fold)]
FUNCTION_RULES: dict[Any, Rule] = {F.unfold: unfold, F.fold: fold}
