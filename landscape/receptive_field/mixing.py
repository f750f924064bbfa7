"""Rules for token mixing and reductions: attention, matmul / einsum, means, roll.

An op that pairs every position with every other (a product of two feature maps, as in
attention logits) or sums over all of them (a contraction or reduction over the dimensions
holding every position) makes every output depend on the whole input: global; so does a
product with an operand computed from global features (linear attention: ``q @ (k.T @ v)``
is ``(q @ k.T) @ v``). Over the inner positions of blocks only (:func:`layout.mixed`: a map
reshaped as ``(H / w, w)``, the inner part mixed) each position reads its block
(:func:`consumed`, :func:`kept`); over one whole axis but not the other it is refused. A
matmul / einsum with one feature map and a constant (a per-position linear map) keeps the
geometry, and one whose operands hold the positions only in batch dimensions is one product
per position (both operands' geometry). A mean over every position is a global average pool
(recorded).

*Windowed* attention is local. Swin and MaxViT's block attention fold the windows into the
batch: the token dimension holds the positions inside a window, an atom ``(axis, 1, w)`` per
image axis, and the batch holds the window index, ``(axis, w, n)`` (:mod:`.layout` follows the
reshapes). Attention over such tokens, as ``scaled_dot_product_attention`` or as the matmuls
(or einsums) ``q @ k.T`` and ``attn @ v``, makes position t depend on the w positions of its
window, ``w * (t // w) .. w * (t // w) + w - 1`` along each axis: a resampling with period w
(:meth:`~landscape.receptive_field.phases.Phased.resample`), exact at every phase. Attention
whose tokens hold a whole axis (a ViT) or positions strided across the map (MaxViT's grid
attention) stays global. ``torch.roll`` along an intact image axis is a translation (Swin's
shifted windows roll the map, attend, and roll back; the positions that wrap around are the
border, ignored as a conv's padding is); across any other spatial dimension it is global.
torchvision's ``shifted_window_attention`` is read from its arguments (window and shift sizes).
"""

from __future__ import annotations

import functools
import operator
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import swin_transformer

from landscape.receptive_field import layout as L
from landscape.receptive_field.context import Ctx, Rule
from landscape.receptive_field.geometry import (
    AXES, GLOBAL, Geometry, Skip, State, Window, arg, merge, resampled,
)

Result = tuple[State, "dict[str, Any] | None"]
_C = (("c", 0, None),)


def _local(s: State) -> bool:
    return isinstance(s, Geometry) and s.is_local


def _with(x: Geometry, layout: L.Layout) -> Geometry:
    return Geometry(x.h, x.w, layout)


ATTENTION_FUNCTIONS = (F.scaled_dot_product_attention, F.multi_head_attention_forward,
                       swin_transformer.shifted_window_attention)


def window_sizes(batch: L.Layout, tokens: tuple) -> dict[str, int] | None:
    """``{axis: w}`` when the token dimension ``tokens`` holds windows (module doc): per image
    axis in it, its innermost atoms, w positions in all, whose outer atoms lie in ``batch``
    (:func:`layout.mixed`; in any order: Hiera's unrolled tokens hold a window's positions
    outermost first). None for anything else (a whole axis, strided positions, a class
    token, channels)."""
    if not tokens or any(a[0] not in ("h", "w") for a in tokens):
        return None
    try:
        windows = L.mixed(batch + (tokens,), {len(batch)}, "")
    except Skip:
        return None
    return windows if windows and None not in windows.values() else None


def _same_atoms(a: L.Layout, b: L.Layout) -> bool:
    """Equal layouts, a size that one of them does not know counting as equal."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(p[:2] == q[:2] and None in (p[2], q[2]) or p == q
                                 for p, q in zip(x, y)) for x, y in zip(a, b))


def windowed(x: Geometry, windows: dict[str, int], layout: L.Layout, where: str,
             shift: dict[str, int] | None = None,
             reach: dict[str, tuple[int, int, int]] | None = None,
             queries: dict[str, int] | None = None) -> Geometry:
    """``x`` after an op within windows of ``windows[axis]`` positions along each axis (a
    resampling with period w, :meth:`Phased.resample`): position t reads its window,
    ``w * ((t - s) // w) + s`` .. ``+ w - 1`` (``shift`` s: the windows' offset,
    torchvision's shifted windows), as attention does. ``queries[axis] = m``: m outputs per
    window of w positions (pooled queries, a strided conv), output t reading window
    ``t // m``; with ``reach[axis] = (p, k, s)``, a kernel of extent k, stride s and left
    padding p run on each window (zero padding at its edges): output t, the o-th of its
    window, reads only what its kernel covers, ``start + o s - p`` .. ``+ k - 1``, clipped to
    the window."""
    axes = {}
    for name in ("h", "w"):
        a = x.axis(name)
        if name in windows:
            w, s = windows[name], (shift or {}).get(name, 0)
            p, k, step = (reach or {}).get(name, (None, None, None))
            m = (queries or {}).get(name, w)

            def taps(t: int, w: int = w, s: int = s, p: int | None = p, k: int | None = k,
                     step: int | None = step, m: int = m) -> tuple[int, int]:
                start = w * ((t - s) // m) + s
                if p is None:
                    return start, start + w - 1
                first = start + (t - s) % m * step - p
                return max(start, first), min(start + w - 1, first + k - 1)
            size = None if a.size is None else a.size * m // w
            a = resampled(a, m, w, taps, size, name, where)
        axes[name] = a
    return Geometry(axes["h"], axes["w"], layout)


def _window_record(windows: dict[str, int]) -> dict[str, Any]:
    return {"kind": "attention", "kernel": (windows.get("h", 1), windows.get("w", 1)),
            "stride": (1, 1)}


def _block_windows(x: Geometry, dims: set[int], where: str) -> dict[str, int] | None:
    """``{axis: w}`` for an op mixing the positions in ``dims`` (:func:`layout.mixed`):
    blocks of w along each axis mixed, ``{}`` where they hold none; None where they hold
    every position of the map (global). Mixing a whole axis but not the other (a Linear
    over one row's positions, attention along one axis) is refused: a per-axis global RF is
    not represented."""
    m = L.mixed(x.layout, dims, where)
    whole = {a for a, w in m.items() if w is None}
    if not whole:
        return m
    if "*" in whole or {a for a in ("h", "w") if any(
            b[0] == a and b[2] != 1 for dim in x.layout for b in dim)} <= whole:
        return None
    raise Skip(f"{where} mixes every position along {'/'.join(sorted(whole)).upper()} but "
               "not along the other axis; the RF analysis represents a window or a global "
               "mix, not a whole row or column")


def consumed(x: Geometry, dims: set[int], kind: str, where: str
             ) -> tuple[State, dict[str, Any] | None] | None:
    """``x`` after an op that turns everything in ``dims`` into new values per remaining
    position (a Linear, a conv's channels, a sum or reduction over them): where ``dims``
    hold the inner w positions of blocks (a map reshaped as ``(H / w, w)``, the inner part
    moved into channels or a token dimension: a space-to-depth, a transform per block),
    each remaining position reads its block, a window of kernel = stride = w, and the
    layout counts positions in blocks (the ``dims`` then hold none); GLOBAL where they hold
    every position; None where they hold none (nothing to do)."""
    windows = _block_windows(x, dims, where)
    if windows is None:
        return GLOBAL, {"kind": kind}
    if not windows:
        return None
    k = (windows.get("h", 1), windows.get("w", 1))
    window = Window(kind, k, k, (0, 0))
    out = window.apply(x)
    layout = L.pool_atoms(x.layout, windows, where)
    return Geometry(out.h, out.w, layout), window.fields(AXES)


def kept(x: Geometry, dims: set[int], where: str) -> Geometry | None:
    """``x`` after an op that mixes the positions in ``dims`` and keeps them (a softmax
    over them): each reads its block (:func:`windowed`); GLOBAL where they hold every
    position; None where they hold none."""
    windows = _block_windows(x, dims, where)
    if windows is None:
        return GLOBAL
    return windowed(x, windows, x.layout, where) if windows else None


def _window_pair(sq: Geometry, iq: int, sk: Geometry, ik: int,
                 pairs: list[tuple[int, int]], where: str
                 ) -> tuple[dict[str, int], dict[str, int]] | None:
    """(the queries' windows, the keys' windows) of attention between the tokens in dimension
    ``iq`` of ``sq`` and those in ``ik`` of ``sk``, their other dimensions paired as
    ``pairs`` ((query dim, key dim): the batch, heads): both hold windows
    (:func:`window_sizes`), the keys' w a multiple of the queries' (pooled queries: HieraDet,
    Hiera), and the two layouts agree once the keys are pooled to the queries' size. None for
    anything else."""
    def others(s: Geometry, i: int) -> L.Layout:
        return tuple(d for j, d in enumerate(s.layout) if j != i)
    windows = window_sizes(others(sq, iq), sq.layout[iq])
    keys = window_sizes(others(sk, ik), sk.layout[ik])
    if windows is None or keys is None or set(keys) != set(windows) or any(
            keys[a] % windows[a] for a in keys):
        return None
    pooled = {a: keys[a] // windows[a] for a in keys if keys[a] != windows[a]}
    try:
        pk = L.pool_atoms(sk.layout, pooled, where) if pooled else sk.layout
    except Skip:
        return None
    if not all(_same_atoms((sq.layout[a],), (pk[b],)) for a, b in [*pairs, (iq, ik)]):
        return None
    return windows, keys


def _sdpa(ctx: Ctx) -> Result:
    """``scaled_dot_product_attention(q, k, v)`` on (..., tokens, features): local when the
    tokens are windows shared by q, k and v, the queries' possibly pooled, w / s positions
    per window against the keys' w (:func:`_window_pair`): query position t then reads its
    window of keys, ``w * (t // (w / s))`` .. ``+ w - 1``."""
    q, k, v = (ctx.state(arg(ctx.node, i, n, None))
               for i, n in enumerate(("query", "key", "value")))
    if not all(_local(s) and len(s.layout) >= 2 for s in (q, k, v)):
        return GLOBAL, {"kind": "attention"}
    n = len(q.layout)
    _paired(ctx, (q, {n - 2}), (k, {len(k.layout) - 2}))
    if any(len(s.layout) != n or L.is_spatial(s.layout[-1]) for s in (q, k, v)):
        return GLOBAL, {"kind": "attention"}
    pairs = [(i, i) for i in range(n - 2)]
    found = [_window_pair(q, n - 2, s, n - 2, pairs, ctx.where) for s in (k, v)]
    if None in found or found[0] != found[1]:
        return GLOBAL, {"kind": "attention"}
    windows, keys = found[0]
    layout = q.layout[:-1] + v.layout[-1:]
    out = merge([q, windowed(k, keys, layout, ctx.where, queries=windows),
                 windowed(v, keys, layout, ctx.where, queries=windows)], ctx.where, layout)
    return out, _window_record(keys)


def _shifted_window_attention(ctx: Ctx) -> Result:
    """torchvision's ``shifted_window_attention(x, ..., window_size, num_heads, shift_size)``
    on an (N, H, W, C) map: it pads H and W to multiples of the window, shifts by ``-shift``
    and attends within windows, with a mask across the wrapped border. A window that holds a
    whole (padded) axis is global attention, as a ViT's."""
    x = ctx.x
    if not _local(x):
        return GLOBAL, {"kind": "attention"}
    dims = L.intact(x.layout)
    n = len(x.layout)
    if dims != {"h": n - 3, "w": n - 2} or L.is_spatial(x.layout[-1]):
        raise Skip(f"{ctx.where} needs an (N, H, W, C) feature map")
    size = dict(zip("hw", ctx.need_shape(ctx.node.args[0])[-3:-1]))
    window = dict(zip("hw", ctx.resolve(arg(ctx.node, 4, "window_size", None))))
    shift = dict(zip("hw", ctx.resolve(arg(ctx.node, 6, "shift_size", None))))
    for a in "hw":
        padded = -(-size[a] // window[a]) * window[a]
        if window[a] >= padded:
            return GLOBAL, {"kind": "attention"}  # one window holds the whole axis
    # the query of position t is computed from t alone: a path of x's own geometry (as
    # through q in scaled_dot_product_attention)
    return merge([x, windowed(x, window, x.layout, ctx.where, shift)], ctx.where,
                 x.layout), _window_record(window)


def attention(ctx: Ctx) -> Result | None:
    """An attention module / function (recorded, kind "attention"), else None. Attention mixes
    all tokens (global) unless its tokens are windows (module doc)."""
    node = ctx.node
    if isinstance(ctx.mod, nn.MultiheadAttention):
        return GLOBAL, {"kind": "attention"}
    if node.op != "call_function" or node.target not in ATTENTION_FUNCTIONS:
        return None
    if node.target is F.scaled_dot_product_attention:
        return _sdpa(ctx)
    if node.target is swin_transformer.shifted_window_attention:
        return _shifted_window_attention(ctx)
    return GLOBAL, {"kind": "attention"}


def _windowed_pair(ctx: Ctx, sa: Geometry, la: str, sb: Geometry, lb: str, lo: str
                   ) -> Geometry | None:
    """The product of two feature maps within windows, as an einsum ``la,lb->lo``: the batch
    letters (in both operands and the output) hold the same atoms in both; each operand has
    one more spatial letter holding windows, the queries' possibly pooled
    (:func:`_window_pair`). The output keeps one of them, the queries (the first in ``lo``);
    the other, the keys, is summed over (``attn @ v``, ``v @ attn.T``) or becomes a dimension
    of channels (``q @ k.T``). Position t then reads the keys' operand over its window.
    Where neither operand has positions outside the batch letters, the product is one per
    position (VOLO's outlook attention, over each position's window taps): both operands'
    geometry, merged. None for any other product."""
    if len(la) != len(sa.layout) or len(lb) != len(sb.layout) or len(set(la)) < len(la) \
            or len(set(lb)) < len(lb):
        return None
    batch = set(la) & set(lb) & set(lo)
    own_a = [c for c, d in zip(la, sa.layout) if L.is_spatial(d) and c not in batch]
    own_b = [c for c, d in zip(lb, sb.layout) if L.is_spatial(d) and c not in batch]
    if not own_a and not own_b:  # positions only in the batch: a product per position
        return _per_position(ctx, sa, la, sb, lb, lo)
    if len(own_a) + len(own_b) == 1:  # keys whose windows are taps (HaloNet)
        (sq, lq, sk, lk) = (sa, la, sb, lb) if own_a else (sb, lb, sa, la)
        return _coarse_keys(ctx, sq, lq, (own_a or own_b)[0], sk, lk, lo, batch)
    if len(own_a) != 1 or len(own_b) != 1 or own_a == own_b:
        return None
    (i,), (j,) = own_a, own_b
    kept = [c for c in lo if c in (i, j)]
    if not kept:
        return None
    (sq, lq, q), (sk, lk, k) = ((sa, la, i), (sb, lb, j)) if kept[0] == i else \
        ((sb, lb, j), (sa, la, i))
    found = _window_pair(sq, lq.index(q), sk, lk.index(k),
                         [(lq.index(c), lk.index(c)) for c in batch], ctx.where)
    if found is None:
        return None
    windows, keys = found
    layout = tuple(_C if c == k else sq.layout[lq.index(c)] if c in lq else
                   sk.layout[lk.index(c)] for c in lo)
    return merge([sq, windowed(sk, keys, layout, ctx.where, queries=windows)], ctx.where,
                 layout)


def _coarse_keys(ctx: Ctx, sq: Geometry, lq: str, q: str, sk: Geometry, lk: str, lo: str,
                 batch: set[str]) -> Geometry | None:
    """Queries in blocks of w (their letter ``q`` holds the inner positions of each block, the
    batch letters the block index ``(axis, w, n)``) against keys that hold positions only as
    those block indices, one coarse position per block (``(axis, 1, n)``: each a window of
    taps, HaloNet's haloed key windows from ``Tensor.unfold``): query position t reads the
    keys' coarse position t // w. None for any other product."""
    windows = window_sizes(tuple(d for c, d in zip(lq, sq.layout) if c != q),
                           sq.layout[lq.index(q)])
    if windows is None or any(L.is_spatial(d) and c not in batch for c, d in zip(lk, sk.layout)):
        return None
    for c in batch:
        coarse = tuple((a[0], a[1] // windows[a[0]], a[2]) if a[0] in windows else a
                       for a in sq.layout[lq.index(c)])
        if not _same_atoms((coarse,), (sk.layout[lk.index(c)],)):
            return None
    axes = {}
    for name in ("h", "w"):
        a = sk.axis(name)
        if name in windows:
            w = windows[name]
            a = resampled(a, w, 1, lambda t, w=w: (t // w, t // w),
                          None if a.size is None else a.size * w, name, ctx.where)
        axes[name] = a
    layout = tuple(_C if c not in lq else sq.layout[lq.index(c)] for c in lo)
    return merge([sq, Geometry(axes["h"], axes["w"], layout)], ctx.where, layout)


def _paired(ctx: Ctx, *operands: tuple[Geometry, set[int]]) -> None:
    """Refuse attention-like products whose positions (in ``dims`` of each operand) span one
    whole axis and not the other (axial attention): the result is not global."""
    for x, dims in operands:
        _block_windows(x, dims, ctx.where)


def _any_global(states: list[State]) -> bool:
    """An operand computed from global features: a product with it is global (linear
    attention's ``q @ (k.T @ v)`` is ``(q @ k.T) @ v``: every position's values reach every
    output), unlike an element-wise gate (the ``se_gates`` convention)."""
    return any(isinstance(s, Geometry) and not s.is_local for s in states)


def _per_position(ctx: Ctx, sa: Geometry, la: str, sb: Geometry, lb: str, lo: str
                  ) -> Geometry | None:
    """A product whose operands hold positions only in batch letters, the same in both
    (other batch dimensions may broadcast, a size-1 one against heads): both operands'
    geometry per position. None where the positions differ."""
    dims = []
    for c in lo:
        da = sa.layout[la.index(c)] if c in la else None
        db = sb.layout[lb.index(c)] if c in lb else None
        if da is not None and db is not None and (L.is_spatial(da) or L.is_spatial(db)):
            if not _same_atoms((da,), (db,)):
                return None
            dims.append(da)
        else:
            dims.append(da if da or db is None else db)  # the broadcast one: () is size 1
    return merge([sa, sb], ctx.where, tuple(dims))


def matmul(ctx: Ctx) -> Result:
    a, b = ctx.node.args[0], ctx.node.args[1]
    sa, sb = ctx.state(a), ctx.state(b)
    if _any_global([sa, sb]):
        return GLOBAL, None
    if _local(sa) and _local(sb):
        batch = "abcdefgh"[:len(sa.layout) - 2]
        out = (_windowed_pair(ctx, sa, batch + "ik", sb, batch + "kj", batch + "ij")
               if len(sa.layout) == len(sb.layout) >= 2 else None)
        if out is None:  # both operands carry positions: pairs of positions (attention)
            _paired(ctx, (sa, {len(sa.layout) - 2}), (sb, {len(sb.layout) - 1}))
            return GLOBAL, None
        return out, None
    if _local(sa):  # x @ W: a Linear over x's last dimension
        sa = _summed(sa, {len(sa.layout) - 1}, ctx.where)
        if not _local(sa):
            return sa, None
        nb = len(ctx.shape(b) or (0, 0))
        layout = L.remove(sa.layout, -1, ctx.where) if nb == 1 else L.channel(sa.layout, -1,
                                                                               ctx.where)
        return _with(sa, layout), None
    if len(sb.layout) < 2:
        return GLOBAL, None
    sb = _summed(sb, {len(sb.layout) - 2}, ctx.where)  # W @ x: over x's dimension -2
    if not _local(sb):
        return sb, None
    return _with(sb, sb.layout[:-2] + (_C,) + sb.layout[-1:]), None


def _summed(x: Geometry, dims: set[int], where: str) -> State:
    """``x`` after a weighted sum over ``dims`` (:func:`consumed`; ``x`` where they hold no
    positions)."""
    out = consumed(x, dims, "linear", where)
    return x if out is None else out[0]


def einsum(ctx: Ctx) -> Result:
    eq, operands = ctx.node.args[0], list(ctx.node.args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    eq = eq.replace(" ", "")
    if "..." in eq or "->" not in eq:
        raise Skip(f"{ctx.where}: einsum '{eq}' needs explicit output indices without '...'")
    lhs, rhs = eq.split("->")
    states = [ctx.state(o) for o in operands]
    if _any_global(states):
        return GLOBAL, None
    local = [i for i, s in enumerate(states) if _local(s)]
    if len(local) == 2 and len(operands) == 2:  # windowed attention (MaxViT's), or global
        la, lb = lhs.split(",")
        out = _windowed_pair(ctx, states[0], la, states[1], lb, rhs)
        if out is None:
            batch = set(la) & set(lb) & set(rhs)
            _paired(ctx, *[(s, {d for d, c in enumerate(letters) if c not in batch})
                           for s, letters in zip(states, (la, lb))
                           if len(letters) == len(s.layout)])
            return GLOBAL, None
        return out, None
    if len(local) != 1:
        return GLOBAL, None  # several operands carry positions: token mixing
    x, letters = states[local[0]], lhs.split(",")[local[0]]
    if len(letters) != len(x.layout):
        raise Skip(f"{ctx.where}: einsum '{eq}' does not match a {len(x.layout)}-d operand")
    x = _summed(x, {d for d, ch in enumerate(letters) if ch not in rhs}, ctx.where)
    if not _local(x):
        return x, None  # sums over every position
    return _with(x, tuple(x.layout[letters.index(ch)] if ch in letters else _C for ch in rhs)), None


_MEANS = {torch.mean, "mean"}
_SUMS = {torch.sum, "sum"}
_MAXES = {torch.amax, torch.amin, "amax", "amin"}


def reduce(ctx: Ctx, at: int = 1) -> Result:
    """mean / sum / amax / ... over dims (argument ``at``; 2 for a norm, after its order):
    global when it covers every spatial position, a pool of blocks over their inner
    positions (:func:`consumed`)."""
    x, node = ctx.local_x(), ctx.node
    dims = ctx.resolve(arg(node, at, "dim", None))
    n = len(x.layout)
    ds = set(range(n)) if dims is None or dims == () or dims == [] else {
        L.norm_dim(d, n, ctx.where) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    spatial = {d for d in ds if L.is_spatial(x.layout[d])}
    keep = ctx.out_ndim == n if ctx.out_ndim is not None else bool(
        ctx.resolve(arg(node, at + 1, "keepdim", False)))
    if not spatial:
        left = [dim if d not in ds else () for d, dim in enumerate(x.layout)
                if d not in ds or keep]
        return _with(x, tuple(left)), None
    pool = "avg_pool" if node.target in _MEANS or node.target in _SUMS else "max_pool" \
        if node.target in _MAXES else None
    out = consumed(x, spatial, pool or "reduction", ctx.where)
    if out is None or not _local(out[0]):
        return GLOBAL, {"kind": "global_avg_pool"} if node.target in _MEANS else None
    y, fields = out  # over the inner positions of blocks: a pool of each block
    left = tuple(dim if d not in ds else () for d, dim in enumerate(y.layout)
                 if d not in ds or keep)
    return _with(y, left), fields if pool else None


def _relative_logits(ctx: Ctx) -> Result:
    """timm's ``rel_logits_1d(q, rel_k, permute_mask)`` (BoTNet's and HaloNet's relative
    position logits; traced as one call, :func:`leaf_functions`): for q of (B, H, W, dim) the
    logits ``q[b, y, x] . rel_k[j - x + W - 1]`` of (B, H, W, W), tiled to (B, H, H, W, W)
    and permuted; its pads and reshapes only shift each query row's values into absolute key
    order, so every logit is computed from its query position alone: q's geometry, the key
    dimensions channels."""
    q = ctx.local_x()
    if len(q.layout) != 4 or L.is_spatial(q.layout[-1]):
        raise Skip(f"{ctx.where} needs queries of (batch, height, width, dim)")
    mask = ctx.resolve(arg(ctx.node, 2, "permute_mask", None))
    b, y, x, _ = q.layout
    layout = L.permute((b, y, _C, x, _C), list(mask), ctx.where)
    return _with(q, layout), None


@functools.cache
def _timm_leaf_functions() -> dict[Any, Rule]:
    """timm's helpers with a rule of their own, where timm is installed."""
    try:
        from timm.layers import bottleneck_attn, halo_attn
    except ImportError:  # timm is an optional extra
        return {}
    return {f: _relative_logits for f in {bottleneck_attn.rel_logits_1d,
                                           halo_attn.rel_logits_1d}}


def leaf_functions() -> dict[Any, Rule]:
    """The functions the fx trace keeps as one call (their insides pad and reshape positions
    in ways the layout does not follow), each with its rule: timm's, once timm is imported
    (a model that calls them has imported it), so that importing the analysis does not
    import timm (about 0.45 s)."""
    return _timm_leaf_functions() if "timm" in sys.modules else {}


def _norm(ctx: Ctx) -> Result:
    """A p-norm over dims (ConvNeXt-V2's global response normalisation: a norm over every
    position, a global statistic that then gates the map): a reduction."""
    return reduce(ctx, at=2)


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
    """``torch.roll``: a translation along intact image axes (module doc), global across other
    spatial dimensions; without ``dims`` it rolls the flattened tensor (global)."""
    x = ctx.local_x()
    shifts = ctx.resolve(arg(ctx.node, 1, "shifts", None))
    dims = ctx.resolve(arg(ctx.node, 2, "dims", None))
    if dims is None:
        return (GLOBAL if L.spatial_dims(x.layout) else x), None
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    shifts = list(shifts) if isinstance(shifts, (list, tuple)) else [shifts]
    by_dim = {v: k for k, v in L.intact(x.layout).items()}
    axes = {"h": x.h, "w": x.w}
    for d, s in zip(dims, shifts):
        d = L.norm_dim(d, len(x.layout), ctx.where)
        if not L.is_spatial(x.layout[d]):
            continue
        if d not in by_dim:
            return GLOBAL, None  # positions wrap around across a split or merged dimension
        name = by_dim[d]
        axes[name] = resampled(axes[name], 1, 1, lambda t, s=int(s): (t - s, t - s),
                               axes[name].size, name, ctx.where)
    return Geometry(axes["h"], axes["w"], x.layout), None


FUNCTION_RULES: dict[Any, Rule] = {
    operator.matmul: matmul, torch.matmul: matmul, torch.bmm: matmul, torch.mm: matmul,
    torch.einsum: einsum, torch.roll: roll,
    **{f: reduce for f in (torch.sum, torch.amax, torch.amin, torch.std, torch.var,
                           torch.logsumexp)},
    **{f: _norm for f in (torch.norm, torch.linalg.norm, torch.linalg.vector_norm)},
}  # and leaf_functions()
METHOD_RULES: dict[str, Rule] = {
    "matmul": matmul, "bmm": matmul, "mm": matmul, "roll": roll,
    **{m: reduce for m in ("sum", "amax", "amin", "std", "var", "logsumexp")},
    "norm": _norm,
}
