"""Rules for ops that move, split, join, reduce or mix the dimensions of a feature map.

The geometry of a position (its RF) does not change when dimensions are permuted, reshaped,
split or concatenated along non-spatial dimensions; these rules track where the spatial axes
went (:mod:`.layout`). A channel concatenation of views shifted against each other is a
space-to-depth and spans them like a window. Slicing an intact spatial axis ``[start::step]`` shifts position 0 by
``start`` positions and multiplies the jump by ``step``; padding by p on the left shifts it by
``-p``. Contracting, normalising over, or attending across spatial positions is token mixing:
the output is global (:mod:`.mixing`).
"""

from __future__ import annotations

import builtins
import math
import operator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.models import swin_transformer

from landscape.receptive_field import layout as L
from landscape.receptive_field.context import Ctx, Rule
from landscape.receptive_field.geometry import (
    GLOBAL, Geometry, Skip, State, Window, arg, merge, shift,
)

Result = tuple[State, "dict[str, Any] | None"]
_C = (("c", 0, None),)


def last_axes(x: Geometry, k: int, where: str) -> tuple[str, str]:
    """Image axes held whole by dimensions ``-k`` and ``-k + 1`` (k = 2: NCHW; 3: NHWC)."""
    ndim = len(x.layout)
    found = {d: a for a, d in L.intact(x.layout).items()}
    dims = (ndim - k, ndim - k + 1)
    if dims[0] not in found or dims[1] not in found:
        raise Skip(f"{where} needs a feature map with its spatial axes in dimensions "
                   f"{-k}, {-k + 1}; here they lie in {sorted(L.spatial_dims(x.layout))} of "
                   f"{ndim} (a permute or reshape the RF analysis could not follow?)")
    return found[dims[0]], found[dims[1]]


def unsized(layout: L.Layout) -> L.Layout:
    """Sizes of single-atom dimensions forgotten (refilled from the next shape seen)."""
    return tuple((L.sized(dim[0], None),) if len(dim) == 1 else dim for dim in layout)


def _local(s: State) -> bool:
    return isinstance(s, Geometry) and s.is_local


def _with(x: Geometry, layout: L.Layout) -> Geometry:
    return Geometry(x.h, x.w, layout)


# ------------------------------------------------------------------ permute, reshape, index

def permute(ctx: Ctx) -> Result:
    x = ctx.local_x()
    dims = ctx.resolve(list(ctx.node.args[1:]) or ctx.node.kwargs.get("dims"))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    return _with(x, L.permute(x.layout, dims, ctx.where)), None


def transpose(ctx: Ctx) -> Result:
    x = ctx.local_x()
    t, n = ctx.node.target, len(x.layout)
    if t in ("t",):
        return _with(x, L.swap(x.layout, 0, n - 1, ctx.where)), None
    a, b = ctx.resolve(ctx.node.args[1:3])
    if t in ("movedim", torch.movedim):
        order = [d for d in range(n) if d != L.norm_dim(a, n, ctx.where)]
        order.insert(L.norm_dim(b, n, ctx.where), L.norm_dim(a, n, ctx.where))
        return _with(x, L.permute(x.layout, order, ctx.where)), None
    return _with(x, L.swap(x.layout, a, b, ctx.where)), None


_FLATTEN = {torch.flatten, "flatten"}
_EXPAND = {"expand", "expand_as", torch.broadcast_to, "broadcast_to"}


def reshape(ctx: Ctx) -> Result:
    """flatten / unsqueeze need no sizes; view / reshape / expand use the traced shapes."""
    if isinstance(ctx.x, Geometry) and not ctx.x.is_local:
        return GLOBAL, None  # a global tensor in another shape (expand_as a feature map)
    x, node, mod = ctx.local_x(), ctx.node, ctx.mod
    t = node.target
    if isinstance(mod, torch.nn.Flatten) or t in _FLATTEN:
        start = mod.start_dim if mod is not None else ctx.resolve(arg(node, 1, "start_dim", 0))
        end = mod.end_dim if mod is not None else ctx.resolve(arg(node, 2, "end_dim", -1))
        # sizes first where known: merged atoms of unknown size cannot be split again
        layout = L.fit(x.layout, ctx.shape(ctx.x_node), ctx.where)
        return _with(x, L.flatten(layout, start, end, ctx.where)), None
    if t in ("unsqueeze", torch.unsqueeze):
        return _with(x, L.insert(x.layout, int(ctx.resolve(arg(node, 1, "dim", None))))), None
    shape_in, shape_out = ctx.need_shape(ctx.x_node), ctx.need_shape(node)
    if t in _EXPAND:
        padded = ((),) * (len(shape_out) - len(x.layout)) + x.layout
        return _with(x, L.fit(padded, shape_out, ctx.where)), None
    return _with(x, L.reshape(x.layout, shape_in, shape_out, ctx.where)), None


_TUPLE_OPS = {torch.chunk, torch.split, torch.tensor_split, torch.unbind, "chunk", "split",
              "tensor_split", "unbind"}
META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout",
               "is_sparse", "is_quantized", "is_meta"}


def getattr_(ctx: Ctx) -> Result:
    name = ctx.node.args[1]
    if name in META_ATTRS or not isinstance(ctx.x, Geometry):
        return None, None
    x = ctx.local_x()
    if name == "T":
        return _with(x, L.permute(x.layout, list(range(len(x.layout)))[::-1], ctx.where)), None
    if name == "mT":
        return _with(x, L.swap(x.layout, -2, -1, ctx.where)), None
    raise Skip(f"{ctx.where} reads attribute {name!r} of a feature map")


def getitem(ctx: Ctx) -> Result:
    src, index = ctx.node.args[0], ctx.node.args[1]
    if isinstance(src, fx.Node) and (src.target in _TUPLE_OPS or isinstance(
            ctx.values.peek(src), (tuple, list)) or (src.op == "call_module" and isinstance(
                ctx.root.get_submodule(src.target), nn.MultiheadAttention))):
        return ctx.state(src), None  # one part of a chunk / split: same geometry
    x = ctx.local_x()
    ops = L.index_ops(ctx.resolve(index), len(x.layout), ctx.where)
    shape = ctx.shape(ctx.x_node)
    axes: dict[str, Any] = {"h": x.h, "w": x.w}
    whole = {dim: a for a, dim in L.intact(x.layout).items()}
    new: list[tuple] = []
    d = 0
    for op, item in ops:
        if op == "new":
            new.append(())
            continue
        dim, i = x.layout[d], d
        d += 1
        n = None if shape is None else int(shape[i])
        if op == "keep" and n is not None and item.indices(n) == (0, n, 1):
            item = slice(None)  # x[:, 0:] where nothing comes before the image tokens
        if not L.is_spatial(dim):
            if op in ("keep", "gather"):
                new.append(dim if item == slice(None) else unsized((dim,))[0])
            continue
        if op == "gather":
            raise Skip(f"{ctx.where} selects positions with a tensor or list index")
        if item == slice(None):
            new.append(dim)
            continue
        if op == "keep" and n is not None and not range(*item.indices(n)):
            return None, None  # no position at all (x[:, :0] of zero prefix tokens)
        if dim[0][0] == "*" and len(dim) == 1:
            kept = _tokens(dim, op, item, n, ctx.where)
            if kept is None:
                return GLOBAL, None  # class tokens only: a readout
            if kept:
                new.append(kept)
            continue
        if op == "take" and i in whole:
            continue  # one row / column: its positions keep their RF; the axis leaves the layout
        if i not in whole:
            raise Skip(f"{ctx.where} selects or slices positions of a dimension that mixes "
                       "spatial positions")
        name = whole[i]
        a = axes[name]
        step = 1 if item.step is None else int(item.step)
        start = 0 if item.start is None else int(item.start)
        if a.size is not None:
            start, _, step = item.indices(a.size)
            size = len(range(*item.indices(a.size)))
        elif start < 0 or step < 1 or item.stop is not None:
            raise Skip(f"{ctx.where} slices a spatial axis with {item}; pass input_size")
        else:
            size = None
        if step < 1:
            raise Skip(f"{ctx.where} slices a spatial axis with a negative step")
        axes[name] = shift(a, start, step, size)
        new.append(((name, 1, None),))
    return Geometry(axes["h"], axes["w"], tuple(new)), None


def _tokens(dim: tuple, op: str, item: Any, n: int | None, where: str) -> tuple | None:
    """Index ``item`` of a dimension of tokens (class / register tokens before the image
    tokens, :func:`L.token_prefix`): None where only the tokens before the image's are kept
    (a readout, e.g. ``x[:, 0]``, global behind attention), else the dimension that stays
    (``()``: a single image token taken). Where the number of leading tokens is unknown,
    taking one is a readout and slicing is refused."""
    k = L.token_prefix(dim)
    if op == "take":
        t = item if item >= 0 or n is None else item + n
        return () if k is not None and t >= k else None
    if k is None or n is None:
        raise Skip(f"{where} slices a sequence of tokens whose leading class / register "
                   "tokens are not known")
    start, stop, step = item.indices(n)
    if step != 1:
        raise Skip(f"{where} slices a sequence of tokens with step {step}")
    if stop <= k:
        return None
    image = L.image_atoms(dim)
    if image is not None and start == k and stop == n:  # the prefix sliced off
        return image
    return (("*", max(k - start, 0) + 1, stop - start),)


# ---------------------------------------------------------------------- join and split

def cat(ctx: Ctx) -> Result:
    parts = ctx.node.args[0] if ctx.node.args else ctx.node.kwargs["tensors"]
    dim = ctx.resolve(arg(ctx.node, 1, "dim", 0))
    geoms = [s for s in (ctx.state(p) for p in parts) if isinstance(s, Geometry)]
    local = [g for g in geoms if g.is_local]
    d = L.norm_dim(dim, len(local[0].layout), ctx.where)
    if not any(L.is_spatial(g.layout[d]) for g in local):
        layout = L.broadcast([L.channel(g.layout, d, ctx.where) for g in local], None, ctx.where)
        window = _strided_views(ctx, parts)
        if window is not None:
            return _with(window, layout), None
        return _space_to_depth(merge(geoms, ctx.where, layout), local), None
    if len(local) == 1:  # e.g. a class token before image tokens: positions not separable
        states = [ctx.state(p) for p in parts]
        before = [ctx.shape(p) for p in parts[:-1]]
        prefix = None  # tokens without positions (class, registers) all before the image's
        if isinstance(states[-1], Geometry) and states[-1].is_local and None not in before \
                and all(s is None or not s.is_local for s in states[:-1]):
            prefix = sum(int(shape[d]) for shape in before)
            # a prefix token has no position: what it holds reaches the image tokens only
            # through token mixing, which makes them global; read alone it is a readout
            geoms = [states[-1]]
        layout = L.opaque(local[0].layout, d, ctx.where, prefix, image=local[0].layout[d])
        return merge(geoms, ctx.where, layout), None
    raise Skip(f"{ctx.where} concatenates along spatial axis {dim}")


def _strided_views(ctx: Ctx, parts: Any) -> Geometry | None:
    """The geometry of ``cat`` of the s_h x s_w strided views ``x[..., i::s_h, j::s_w, ...]``
    of one map, every offset once (Swin's patch merging, YOLOv5's Focus, written with
    slices): an s_h x s_w window of stride s_h x s_w on ``x``, exact also on a map whose
    positions are not evenly spaced (:mod:`.phases`). None for any other concatenation."""
    if not parts or not all(isinstance(p, fx.Node) and p.op == "call_function"
                            and p.target is operator.getitem for p in parts):
        return None
    src = parts[0].args[0]
    x, shape = ctx.state(src), ctx.shape(src)
    if any(p.args[0] is not src for p in parts) or not isinstance(x, Geometry) \
            or not x.is_local or shape is None:
        return None
    whole = {dim: a for a, dim in L.intact(x.layout).items()}
    views = []
    for p in parts:
        ops = L.index_ops(ctx.resolve(p.args[1]), len(x.layout), ctx.where)
        if len(ops) != len(x.layout) or any(op != "keep" for op, _ in ops):
            return None
        view = {}
        for i, (_, item) in enumerate(ops):
            if not L.is_spatial(x.layout[i]):
                if item != slice(None):
                    return None
                continue
            if i not in whole:
                return None
            start, stop, step = item.indices(int(shape[i]))
            if len(range(start, stop, step)) != len(range(start, int(shape[i]), step)):
                return None  # stops short of the end: not a space-to-depth view
            view[whole[i]] = (start, step)
        views.append(view)
    if any(set(v) != {"h", "w"} for v in views):
        return None
    steps = {a: views[0][a][1] for a in ("h", "w")}
    if any(v[a][1] != steps[a] for v in views for a in v):
        return None
    starts = [(v["h"][0], v["w"][0]) for v in views]
    if sorted(starts) != [(i, j) for i in range(steps["h"]) for j in range(steps["w"])]:
        return None  # every offset once
    s = (steps["h"], steps["w"])
    return Window("space_to_depth", s, s, (0, 0)).apply(x, ("h", "w"))


def _space_to_depth(out: Geometry, parts: list[Geometry]) -> Geometry:
    """Views of one map shifted against each other and stacked into channels (Swin's patch
    merging written with slices) act like one window spanning them: r grows by the offset
    between their centres, as it would through a strided conv. Branches centred alike
    (Inception) are unchanged."""
    axes = {}
    if any(g.axis(a).parts for g in parts for a in ("h", "w")):
        # maps whose positions are not evenly spaced (upsampled, windowed): branches of the
        # same positions (the heads of a windowed attention) are one merge; shifted views of
        # such a map are followed only as slices (_strided_views)
        for name in ("h", "w"):
            period = math.lcm(*(c.period for g in parts for c in g.axis(name).classes()))
            mids = {tuple(sum(g.axis(name).span(t)) for t in range(period)) for g in parts}
            if len(mids) > 1:
                raise Skip("views of an upsampled map stacked into channels are not followed")
        return out
    for name in ("h", "w"):
        centres = [(g.axis(name).lo + g.axis(name).hi) / 2 for g in parts]
        extra = math.ceil(max(centres) - min(centres))
        a = out.axis(name)
        axes[name] = replace(a, r_min=a.r_min + extra, r_max=a.r_max + extra) if extra else a
    return Geometry(axes["h"], axes["w"], out.layout)


def stack(ctx: Ctx) -> Result:
    parts = ctx.node.args[0]
    dim = int(ctx.resolve(arg(ctx.node, 1, "dim", 0)))
    geoms = [s for s in (ctx.state(p) for p in parts) if isinstance(s, Geometry)]
    layout = L.broadcast([g.layout for g in geoms if g.is_local], None, ctx.where)
    return merge(geoms, ctx.where, L.insert(layout, dim)), None


def split(ctx: Ctx) -> Result:
    x, t = ctx.local_x(), ctx.node.target
    unbind = t in (torch.unbind, "unbind")
    dim = ctx.resolve(arg(ctx.node, 1 if unbind else 2, "dim", 0))
    d = L.norm_dim(dim, len(x.layout), ctx.where)
    if L.is_spatial(x.layout[d]):
        raise Skip(f"{ctx.where} splits along spatial dimension {dim}")
    layout = L.remove(x.layout, d, ctx.where) if unbind else L.channel(x.layout, d, ctx.where)
    return _with(x, layout), None


def repeat(ctx: Ctx) -> Result:
    """``repeat_interleave`` / ``repeat`` copies along dimensions that hold no image position
    (GCViT repeats its global query for every window along the batch of windows): the
    layout is refitted to the new sizes; a repeat along a spatial dimension is not followed.
    A global tensor stays global."""
    if isinstance(ctx.x, Geometry) and not ctx.x.is_local:
        return GLOBAL, None
    x, node = ctx.local_x(), ctx.node
    if node.target in ("repeat_interleave", torch.repeat_interleave):
        dim = ctx.resolve(arg(node, 2, "dim", None))
        if dim is None and len(x.layout) > 1:  # it flattens the tensor first
            raise Skip(f"{ctx.where} repeats the flattened tensor (repeat_interleave without "
                       "dim)")
        dims = [L.norm_dim(0 if dim is None else dim, len(x.layout), ctx.where)]
    else:  # x.repeat(*sizes): sizes beyond x's dimensions add leading ones
        sizes = [ctx.resolve(a) for a in node.args[1:]]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = list(sizes[0])
        if len(sizes) != len(x.layout):
            raise Skip(f"{ctx.where} repeats into {len(sizes)} dimensions from "
                       f"{len(x.layout)}")
        dims = [d for d, k in enumerate(sizes) if int(k) != 1]
    if any(L.is_spatial(x.layout[d]) for d in dims):
        raise Skip(f"{ctx.where} repeats along a dimension that holds image positions")
    return _with(x, L.fit(x.layout, ctx.need_shape(node), ctx.where)), None


def pad(ctx: Ctx) -> Result:
    x, mod = ctx.local_x(), ctx.mod
    if mod is not None:
        pads, mode = list(mod.padding), ("circular" if "Circular" in type(mod).__name__
                                         else "constant")
    else:
        pads = list(ctx.resolve(arg(ctx.node, 1, "pad", ())))
        mode = ctx.resolve(arg(ctx.node, 2, "mode", "constant"))
    n, axes, layout = len(x.layout), {"h": x.h, "w": x.w}, list(x.layout)
    whole = {dim: a for a, dim in L.intact(x.layout).items()}
    for i in range(len(pads) // 2):
        d, left, right = n - 1 - i, int(pads[2 * i]), int(pads[2 * i + 1])
        if left == right == 0:
            continue
        if not L.is_spatial(layout[d]):
            layout[d] = _C
            continue
        if d not in whole and mode == "constant" and left > 0 and right == 0:
            # zero tokens before a sequence of tokens (CoaT's slot for its class token)
            star = layout[d][0][0] == "*" and len(layout[d]) == 1
            k = L.token_prefix(layout[d]) if star else 0
            image = L.image_atoms(layout[d]) if star else layout[d]
            layout[d] = L.opaque(tuple(layout), d, ctx.where, None if k is None else k + left,
                                 image)[d]
            continue
        if d not in whole:
            raise Skip(f"{ctx.where} pads a dimension that mixes spatial positions")
        # any mode (zeros, reflection, replication, circular) adds border positions: the ones
        # reading them are the border, ignored as behind a conv's own padding (a conv's
        # padding_mode, a roll's wrapped positions); the others keep their geometry
        a = axes[whole[d]]
        axes[whole[d]] = shift(a, -left, 1, None if a.size is None else a.size + left + right)
        layout[d] = ((whole[d], 1, None),)
    return Geometry(axes["h"], axes["w"], tuple(layout)), None


def patch_merge(ctx: Ctx) -> Result:
    """torchvision Swin's ``_patch_merging_pad``: 2x2 neighbours of a channels-last map
    stacked into channels (a 2x2 stride-2 window, odd sizes padded at the end)."""
    x = ctx.local_x()
    axes = last_axes(x, 3, ctx.where)
    out = Window("patch_merge", (2, 2), (2, 2), (0, 0), ceil_mode=True).apply(x, axes)
    return _with(out, unsized(x.layout)), None


FUNCTION_RULES: dict[Any, Rule] = {
    torch.permute: permute, torch.transpose: transpose, torch.swapaxes: transpose,
    torch.swapdims: transpose, torch.movedim: transpose, torch.flatten: reshape,
    torch.reshape: reshape, torch.squeeze: reshape, torch.unsqueeze: reshape,
    torch.broadcast_to: reshape, operator.getitem: getitem, builtins.getattr: getattr_,
    torch.cat: cat, torch.concat: cat, torch.concatenate: cat, torch.stack: stack,
    torch.chunk: split, torch.split: split, torch.tensor_split: split, torch.unbind: split,
    torch.repeat_interleave: repeat,
    swin_transformer._patch_merging_pad: patch_merge, F.pad: pad,
}
METHOD_RULES: dict[str, Rule] = {
    "permute": permute, **{m: transpose for m in ("transpose", "swapaxes", "swapdims",
                                                   "movedim", "t")},
    **{m: reshape for m in ("flatten", "unflatten", "view", "reshape", "view_as",
                            "reshape_as", "squeeze", "unsqueeze", "expand", "expand_as",
                            "broadcast_to")},
    **{m: split for m in ("chunk", "split", "tensor_split", "unbind")},
    "repeat_interleave": repeat, "repeat": repeat,
}
