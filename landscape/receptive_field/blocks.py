"""Sliding blocks: ``nn.Unfold`` / ``F.unfold`` (im2col) and ``nn.Fold`` / ``F.fold``.

Unfold stacks the k x k window of every position (kernel, stride, padding, dilation as a
conv's) into the channels, ``(N, C, H, W) -> (N, C k k, L)``, and flattens the positions into
the last dimension, row-major. Non-overlapping blocks (kernel = stride, no padding or
dilation, a map they tile) only move each block's offsets into the channels, positions
still (:func:`layout.space_to_depth`): a Linear or conv over those channels reads the block,
a reshape can put them back into a map (TNT's pixels of each patch), and so can the fold
that inverts it. Overlapping windows are a window op: each of the L positions sees its
window, as a conv's output does (the RF of a position is the union over its channels, here
the taps); a fold of those sums the taps back, each at its own position, which a block of
channels does not record: refused by name.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from landscape.receptive_field import layout as L
from landscape.receptive_field import tensor_ops as T
from landscape.receptive_field.context import Ctx, Rule
from landscape.receptive_field.geometry import (
    GLOBAL, Geometry, Skip, State, Window, arg, pair,
)

Result = tuple[State, "dict[str, Any] | None"]
_C = (("c", 0, None),)


def _window(ctx: Ctx, first: int = 1) -> Window:
    """The blocks' window, from the module or from ``F.unfold(x, k, dilation, padding,
    stride)`` (``first`` = 1) / ``F.fold(x, output_size, k, ...)`` (2)."""
    mod, node, where = ctx.mod, ctx.node, ctx.where
    names = (("kernel_size", None), ("dilation", 1), ("padding", 0), ("stride", 1))
    if mod is not None:
        values = [getattr(mod, name) for name, _ in names]
    else:
        values = [ctx.resolve(arg(node, first + i, name, default))
                  for i, (name, default) in enumerate(names)]
    k, d, p, s = (pair(v, name, where) for v, (name, _) in zip(values, names))
    return Window("unfold", k, s, p, d)


def _tiles(window: Window) -> bool:
    """Non-overlapping blocks: kernel = stride, no padding or dilation."""
    return window.kernel == window.stride and window.padding == (0, 0) and \
        window.dilation == (1, 1)


def unfold(ctx: Ctx) -> Result:
    """The window of every position, positions flattened into the last dimension; a row of
    kind ``unfold``."""
    window = _window(ctx)
    x = ctx.x
    if not (isinstance(x, Geometry) and x.is_local):
        return GLOBAL, window.fields(("h", "w"))
    axes = T.last_axes(x, 2, ctx.where)
    if _tiles(window):
        # non-overlapping blocks: the offsets move into the channels, positions still, as a
        # pixel unshuffle's (TNT's pixel patches, MobileViT's unfolding); not a row
        blocks = L.space_to_depth(x.layout, window.kernel, [x.axis(a).size for a in axes])
        if blocks is not None:
            return Geometry(x.h, x.w, L.flatten(blocks, -2, -1, ctx.where)), None
    out = window.apply(x, axes)
    sizes = [out.axis(a).size for a in axes]
    if None in sizes:
        raise Skip(f"{ctx.where} unfolds a map of unknown size: its positions cannot be "
                   "flattened")
    positions = tuple((a, 1, n) for a, n in zip(axes, sizes))
    layout = x.layout[:-3] + (_C, positions)
    return Geometry(out.h, out.w, layout), window.fields(axes)


def fold(ctx: Ctx) -> Result:
    """The inverse of a non-overlapping unfold whose offsets are still in the channels
    (nothing mixed them): the map they came from. Any other fold is refused: it puts every
    tap of a block back at its own position, so the RF of an output position depends on
    whether the taps were mixed after the unfold (VOLO's outlook attention mixes them: the
    RF grows by the window again; an element-wise op does not), which a block's channels
    record only for non-overlapping blocks."""
    window = _window(ctx, first=2)
    x = ctx.x
    if isinstance(x, Geometry) and x.is_local and _tiles(window) and len(x.layout) >= 2:
        positions = x.layout[-1]
        if len(positions) == 2 and all(a[0] in ("h", "w") for a in positions):
            grid = x.layout[:-1] + ((positions[0],), (positions[1],))
            back = L.depth_to_space(grid, window.kernel[0]) \
                if window.kernel[0] == window.kernel[1] else None
            if back is not None:
                return Geometry(x.h, x.w, back), None
    raise Skip(f"{ctx.where} folds blocks back into a map; the RF analysis knows where each "
               "tap goes back only for non-overlapping blocks whose taps nothing has mixed, "
               "so it cannot follow this fold (VOLO's outlook attention)")


def slide(ctx: Ctx) -> Result:
    """``x.unfold(dim, size, step)`` along a whole image axis: windows of ``size`` positions
    every ``step`` (HaloNet's overlapping key windows, a median pool): dimension ``dim``
    counts windows, a new last dimension holds each window's taps, and each window position
    sees its window (the union over its taps, as for ``nn.Unfold``): a window of kernel
    ``size`` and stride ``step`` along that axis (not a row of the table)."""
    x = ctx.local_x()
    d = L.norm_dim(ctx.resolve(arg(ctx.node, 1, "dimension", None)), len(x.layout), ctx.where)
    size = int(ctx.resolve(arg(ctx.node, 2, "size", None)))
    step = int(ctx.resolve(arg(ctx.node, 3, "step", None)))
    if not L.is_spatial(x.layout[d]):
        return _with_taps(x, x.layout), None
    axis = next((a for a, dim in L.intact(x.layout).items() if dim == d), None)
    if axis is None:
        raise Skip(f"{ctx.where} slides windows along dimension {d}, which holds "
                   f"{x.layout[d]}: not one whole image axis")
    other = "w" if axis == "h" else "h"
    out = Window("unfold", (size, 1), (step, 1), (0, 0)).apply(x, (axis, other))
    layout = x.layout[:d] + (((axis, 1, out.axis(axis).size),),) + x.layout[d + 1:]
    return _with_taps(out, layout), None


def _with_taps(x: Geometry, layout: Any) -> Geometry:
    return Geometry(x.h, x.w, layout + (_C,))


MODULE_RULES: list[tuple[Any, Rule]] = [(nn.Unfold, unfold), (nn.Fold, fold)]
FUNCTION_RULES: dict[Any, Rule] = {F.unfold: unfold, F.fold: fold}
METHOD_RULES: dict[str, Rule] = {"unfold": slide}
