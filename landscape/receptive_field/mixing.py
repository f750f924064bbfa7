"""Rules for token mixing and reductions: attention, matmul / einsum, means, roll.

An op that pairs positions (a product of two feature maps, as in attention logits), sums over
them (a contraction or reduction over a dimension holding positions) or wraps them around
(``torch.roll`` across a spatial dimension) makes every output depend on the whole input:
global. A matmul / einsum with one feature map and a constant (a per-position linear map)
keeps the geometry. A mean over every position is a global average pool (recorded); a
reduction over one intact image axis only is refused.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import swin_transformer

from landscape.receptive_field import layout as L
from landscape.receptive_field.context import Ctx, Rule
from landscape.receptive_field.geometry import GLOBAL, Geometry, Skip, State, arg

Result = tuple[State, "dict[str, Any] | None"]
_C = (("c", 0, None),)


def _local(s: State) -> bool:
    return isinstance(s, Geometry) and s.is_local


def _with(x: Geometry, layout: L.Layout) -> Geometry:
    return Geometry(x.h, x.w, layout)


ATTENTION_FUNCTIONS = (F.scaled_dot_product_attention, F.multi_head_attention_forward,
                       swin_transformer.shifted_window_attention)


def attention(ctx: Ctx) -> Result | None:
    """An attention module / function (recorded, kind "attention"), else None. Attention mixes
    all tokens: global (windowed attention is counted as global too)."""
    node = ctx.node
    if isinstance(ctx.mod, nn.MultiheadAttention) or (
            node.op == "call_function" and node.target in ATTENTION_FUNCTIONS):
        return GLOBAL, {"kind": "attention"}
    return None


def matmul(ctx: Ctx) -> Result:
    a, b = ctx.node.args[0], ctx.node.args[1]
    sa, sb = ctx.state(a), ctx.state(b)
    if _local(sa) and _local(sb):
        return GLOBAL, None  # both operands carry positions: pairs of positions (attention)
    if _local(sa):
        if L.is_spatial(sa.layout[-1]):
            return GLOBAL, None
        nb = len(ctx.shape(b) or (0, 0))
        layout = L.remove(sa.layout, -1, ctx.where) if nb == 1 else L.channel(sa.layout, -1,
                                                                               ctx.where)
        return _with(sa, layout), None
    if len(sb.layout) < 2 or L.is_spatial(sb.layout[-2]):
        return GLOBAL, None
    return _with(sb, sb.layout[:-2] + (_C,) + sb.layout[-1:]), None


def einsum(ctx: Ctx) -> Result:
    eq, operands = ctx.node.args[0], list(ctx.node.args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    eq = eq.replace(" ", "")
    if "..." in eq or "->" not in eq:
        raise Skip(f"{ctx.where}: einsum '{eq}' needs explicit output indices without '...'")
    lhs, rhs = eq.split("->")
    states = [ctx.state(o) for o in operands]
    local = [i for i, s in enumerate(states) if _local(s)]
    if len(local) != 1:
        return GLOBAL, None  # several operands carry positions: token mixing
    x, letters = states[local[0]], lhs.split(",")[local[0]]
    if len(letters) != len(x.layout):
        raise Skip(f"{ctx.where}: einsum '{eq}' does not match a {len(x.layout)}-d operand")
    if any(L.is_spatial(dim) and ch not in rhs for ch, dim in zip(letters, x.layout)):
        return GLOBAL, None  # sums over positions
    return _with(x, tuple(x.layout[letters.index(ch)] if ch in letters else _C for ch in rhs)), None


_MEANS = {torch.mean, "mean"}


def reduce(ctx: Ctx) -> Result:
    """mean / sum / amax / ... over dims: global when it covers every spatial position."""
    x, node = ctx.local_x(), ctx.node
    dims = ctx.resolve(arg(node, 1, "dim", None))
    n = len(x.layout)
    ds = set(range(n)) if dims is None or dims == () or dims == [] else {
        L.norm_dim(d, n, ctx.where) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    spatial = {d for d in ds if L.is_spatial(x.layout[d])}
    keep = ctx.out_ndim == n if ctx.out_ndim is not None else bool(
        ctx.resolve(arg(node, 2, "keepdim", False)))
    if not spatial:
        kept = [dim if d not in ds else () for d, dim in enumerate(x.layout)
                if d not in ds or keep]
        return _with(x, tuple(kept)), None
    record = {"kind": "global_avg_pool"} if node.target in _MEANS else None
    if spatial == L.spatial_dims(x.layout):
        return GLOBAL, record
    if spatial <= set(L.intact(x.layout).values()):
        raise Skip(f"{ctx.where} averages over one spatial axis only")
    return GLOBAL, None


def global_mean(ctx: Ctx) -> Result | None:
    """A mean node (recorded as global_avg_pool when it pools every position), else None."""
    node = ctx.node
    if not ((node.op == "call_method" or node.target is torch.mean) and node.target in _MEANS):
        return None
    if _local(ctx.x):
        return reduce(ctx)
    dims = ctx.resolve(arg(node, 1, "dim", (0, 1, 2, 3)))
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return GLOBAL, ({"kind": "global_avg_pool"} if {int(d) % 4 for d in dims} >= {2, 3}
                    else None)


def roll(ctx: Ctx) -> Result:
    x = ctx.local_x()
    dims = ctx.resolve(arg(ctx.node, 2, "dims", None))
    dims = range(len(x.layout)) if dims is None else dims if isinstance(dims, (list, tuple)) \
        else [dims]
    if any(L.is_spatial(x.layout[L.norm_dim(d, len(x.layout), ctx.where)]) for d in dims):
        return GLOBAL, None  # positions wrap around the border
    return x, None


FUNCTION_RULES: dict[Any, Rule] = {
    operator.matmul: matmul, torch.matmul: matmul, torch.bmm: matmul, torch.mm: matmul,
    torch.einsum: einsum, torch.roll: roll,
    **{f: reduce for f in (torch.sum, torch.amax, torch.amin, torch.std, torch.var,
                           torch.logsumexp)},
}
METHOD_RULES: dict[str, Rule] = {
    "matmul": matmul, "bmm": matmul, "mm": matmul, "roll": roll,
    **{m: reduce for m in ("sum", "amax", "amin", "std", "var", "logsumexp")},
}
