"""What each op of a traced model does to the receptive-field state of its inputs.

One rule per kind of op; :func:`step` dispatches a node to its rule and returns the output state
and, for conv / pool / linear ops, the fields of its :class:`LayerRecord`. Conventions:

* BatchNorm is per-channel affine (its eval-mode map); dropout and stochastic depth are the
  identity for the RF (they drop whole samples or units, never move positions).
* A product (or quotient) of a feature map with a tensor computed only from global features (a
  squeeze-and-excitation gate) rescales channels: with ``se_gates="scale"`` (default, as the
  RFA paper and rfa-toolbox) it adds no path; with ``"global"`` it adds a global path
  (r_max = inf, r_min unchanged). A global term *added* to a feature map (a global-context
  block) is a global path under both. Normalisations by statistics over all positions (GroupNorm,
  InstanceNorm, LayerNorm over spatial dims) follow the same option.
* Token mixing (attention, a matmul or einsum pairing or summing over every spatial
  position, softmax or a reduction over them) makes the output global, and so does a matmul
  or einsum with an operand computed from global features (linear attention:
  ``q @ (k.T @ v)`` is ``(q @ k.T) @ v``), under both ``se_gates``. Mixing the inner
  positions of blocks reads each block; mixing one whole axis only is refused. Windowed
  attention (Swin, MaxViT's block attention) and ``torch.roll`` along an image axis are
  local (:mod:`.mixing`).
* Anything computed only from global features stays global.

Everything else that touches a feature map raises ``Skip`` with a message naming the op.
"""

from __future__ import annotations

import operator
from fractions import Fraction
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth, stochastic_depth

from landscape.receptive_field import blocks as B
from landscape.receptive_field import layout as L
from landscape.receptive_field import mixing as M
from landscape.receptive_field import tensor_ops as T
from landscape.receptive_field.context import Ctx, Rule
from landscape.receptive_field.geometry import (
    GLOBAL, Geometry, Skip, State, Window, arg, merge, pair, resampled,
)
from landscape.receptive_field.phases import resize_taps
from landscape.receptive_field.windows import (
    ADAPTIVE_FUNCTIONS, ADAPTIVE_MODULES, adaptive, adaptive_kind, function_window,
    module_window,
)

Result = tuple[State, "dict[str, Any] | None"]


def _window(ctx: Ctx, window: Window, dims: int = 2) -> Result:
    """``dims``: the image axes lie in dimensions ``-dims, -dims + 1`` (3: a Conv3d's first
    two)."""
    x = ctx.x
    if not (isinstance(x, Geometry) and x.is_local):
        return GLOBAL, window.fields(("h", "w"))
    n = len(x.layout)
    folded = None
    if n > dims and L.is_spatial(x.layout[n - dims - 1]):
        # the channels hold positions: the inner ones of blocks moved there by view / permute
        # (TResNet's space-to-depth stem); a conv mixing all its input channels reads them
        if window.kind != "conv" or _groups(ctx) != 1:
            raise Skip(f"{ctx.where} runs a {window.kind} over a map whose channels hold "
                       "spatial positions; the RF analysis follows only a conv mixing all its "
                       "input channels (groups=1) there")
        folded = M.consumed(x, {n - dims - 1}, "space_to_depth", ctx.where)
        if folded is not None and not (isinstance(folded[0], Geometry) and folded[0].is_local):
            return GLOBAL, window.fields(("h", "w"))
        x = folded[0] if folded is not None else x
    out, fields = _window_on(ctx, x, window, dims)
    return out, fields if folded is None else {**fields, "input": x}


def _groups(ctx: Ctx) -> int:
    if ctx.mod is not None:
        return int(getattr(ctx.mod, "groups", 1))
    return int(ctx.resolve(arg(ctx.node, 6, "groups", 1)))


def _window_on(ctx: Ctx, x: Geometry, window: Window, dims: int) -> Result:
    if window.pointwise and len(x.layout) >= 3 and not L.is_spatial(x.layout[-3]) and \
            not {len(x.layout) - 2, len(x.layout) - 1} <= set(L.intact(x.layout).values()):
        # a 1x1 conv mixes channels only: positions may lie in any layout (MobileViTv2 runs
        # its attention's 1x1 convs on (N, C, patch pixels, patches) tensors)
        return x, window.fields(("h", "w"))
    if dims == 2:
        within = _within_windows(x, window, ctx.where)
        if within is not None:
            return within
    axes = T.last_axes(x, dims, ctx.where)
    out = window.apply(x, axes)
    return Geometry(out.h, out.w, T.unsized(x.layout)), window.fields(axes)


def _within_windows(x: Geometry, window: Window, where: str) -> Result | None:
    """A conv or pool on windows folded into the batch (EfficientViT-MSRA's depthwise conv on
    each attention window, HieraDet's query pooling, TNT's pixel embedding of each patch):
    dimensions -2 and -1 hold the positions inside a window of each axis, ``(axis, 1, w)``,
    the window index lies in the batch (:func:`.mixing.window_sizes`). Its padding reads
    zeros at the window's edges, so each of the m = (w + padding - k) // s + 1 outputs of a
    window reads its kernel's span clipped to its window: a resampling of m outputs per w
    positions, exact per phase; the windows then hold m positions. None where the
    dimensions hold no windows."""
    lay = x.layout
    if len(lay) < 3 or len(lay[-2]) != 1 or len(lay[-1]) != 1:
        return None
    windows = M.window_sizes(lay[:-2], lay[-2] + lay[-1])
    if windows is None or set(windows) != {"h", "w"}:
        return None
    if window.ceil_mode:
        raise Skip(f"{where} runs a {window.kind} with ceil_mode=True on windows folded into "
                   "the batch; the RF analysis follows one with ceil_mode=False there")
    axes = (lay[-2][0][0], lay[-1][0][0])
    reach, m = {}, {}
    for i, name in enumerate(axes):
        k_eff = window.dilation[i] * (window.kernel[i] - 1) + 1
        total = 2 * window.padding[i] if window.pad_total[i] is None else window.pad_total[i]
        m[name] = (windows[name] + total - k_eff) // window.stride[i] + 1
        if m[name] < 1:
            raise Skip(f"{where} runs a {window.kind} of kernel {window.kernel} on windows of "
                       f"{windows[name]} positions folded into the batch: larger than a window")
        reach[name] = (window.padding[i], k_eff, window.stride[i])
    out = M.windowed(x, windows, lay, where, reach=reach, queries=m)
    # the window index counts windows of m positions now
    layout = tuple(tuple((a[0], a[1] * m[a[0]] // windows[a[0]], a[2]) if a[0] in m else a
                         for a in dim) for dim in lay[:-2]) + tuple(
        ((a[0], 1, m[a[0]]),) for dim in lay[-2:] for a in dim)
    return Geometry(out.h, out.w, layout), window.fields(axes)


def _conv3d(ctx: Ctx) -> Result:
    """A Conv3d whose kernel is 1 (stride 1, no padding) along one of its three dimensions,
    the image axes whole in the other two (LambdaNet's r x r x 1 position lambdas over (H, W,
    values)): a 2-d conv over the image axes."""
    mod, x = ctx.mod, ctx.x
    k, s, d = mod.kernel_size, mod.stride, mod.dilation
    p = mod.padding if not isinstance(mod.padding, str) else None
    if p is None:
        raise Skip(f"{ctx.where} is a Conv3d with padding={mod.padding!r}; the RF analysis "
                   "follows explicit padding")
    if not (isinstance(x, Geometry) and x.is_local):
        return GLOBAL, {"kind": "conv"}
    n, whole = len(x.layout), set(L.intact(x.layout).values())
    for first, flat in ((n - 2, 0), (n - 3, 2)):  # image axes in (-2, -1) or (-3, -2)
        if {first, first + 1} <= whole:
            keep = [i for i in range(3) if i != flat]
            other = n - 3 if flat == 0 else n - 1
            if (k[flat], s[flat], p[flat]) != (1, 1, 0) or L.is_spatial(x.layout[other]) \
                    or L.is_spatial(x.layout[n - 4]):
                break
            window = Window("conv", *[tuple(v[i] for i in keep) for v in (k, s, p, d)])
            return _window(ctx, window, dims=n - first)
    raise Skip(f"{ctx.where} has kernel {tuple(k)} over a tensor whose image axes lie in "
               f"dimensions {sorted(L.spatial_dims(x.layout))} of {n}; the RF analysis follows "
               "a Conv3d only with kernel 1, stride 1 and no padding along a third, "
               "non-spatial dimension")


def _conv1d(ctx: Ctx) -> Result:
    """A Conv1d over (N, C, L): along channels (L not spatial: ECA's conv over a pooled
    vector) or with kernel 1 (stride 1, no padding: EfficientViM's projections over its
    flattened tokens) it mixes no positions, so every position keeps its geometry. Over
    flattened positions, see :func:`_along_tokens`."""
    mod, x = ctx.mod, ctx.x
    one = (1, 1)
    fields = {"kind": "conv", "kernel": one, "stride": one, "padding": (0, 0), "dilation": one}
    if not (isinstance(x, Geometry) and x.is_local):
        return GLOBAL, fields
    if len(x.layout) < 2 or L.is_spatial(x.layout[-2]):
        raise Skip(f"{ctx.where} mixes dimension -2, which holds spatial positions")
    pointwise = (mod.kernel_size, mod.stride) == ((1,), (1,)) and mod.padding in (
        (0,), "same", "valid")
    if L.is_spatial(x.layout[-1]) and not pointwise:
        if isinstance(mod.padding, str):
            raise Skip(f"{ctx.where} is a Conv1d with padding={mod.padding!r} over positions; "
                       "the RF analysis follows explicit padding")
        return _along_tokens(ctx, "conv", mod.kernel_size[0], mod.stride[0], mod.padding[0],
                             mod.dilation[0])
    return x, fields


def _pool1d(ctx: Ctx) -> Result:
    """``nn.AvgPool1d`` / ``nn.MaxPool1d`` over (N, C, L): over flattened positions, see
    :func:`_along_tokens` (NextViT's spatial reduction of its keys and values)."""
    mod, x = ctx.mod, ctx.x
    kind = "max_pool" if isinstance(mod, nn.MaxPool1d) else "avg_pool"
    k, s, p = (v[0] if isinstance(v, (tuple, list)) else v
               for v in (mod.kernel_size, mod.stride or mod.kernel_size, mod.padding))
    d = getattr(mod, "dilation", 1)
    d = d[0] if isinstance(d, (tuple, list)) else d
    if not (isinstance(x, Geometry) and x.is_local):
        return GLOBAL, {"kind": kind}
    if not L.is_spatial(x.layout[-1]):
        return x, {"kind": kind}  # along channels: no position mixed
    if mod.ceil_mode:
        raise Skip(f"{ctx.where} pools positions with ceil_mode=True; the RF analysis follows "
                   "a 1-d pool over positions with ceil_mode=False")
    return _along_tokens(ctx, kind, k, s, p, d)


def _along_tokens(ctx: Ctx, kind: str, k: int, s: int, p: int, d: int) -> Result:
    """A 1-d window (kernel k, stride s, padding p, dilation d) over the last dimension,
    which holds flattened positions: along one image axis, a window along it; over a map
    flattened row-major (``(a, 1, A), (b, 1, B)``), only k = s, no padding and k dividing B,
    where every window lies in one row: a 1 x k window of stride k along b. Anything else
    would mix the ends of neighbouring rows: refused."""
    x = ctx.x
    atoms = x.layout[-1]
    axes = {a[0] for a in atoms}
    elsewhere = any(a[0] in axes or a[0] == "*" for dim in x.layout[:-1] for a in dim)
    if not elsewhere and len(atoms) == 1 and atoms[0][0] in ("h", "w") and atoms[0][1] == 1:
        axis = atoms[0][0]
        other = "w" if axis == "h" else "h"
        window = Window(kind, (k, 1), (s, 1), (p, 0), (d, 1))
        out = window.apply(x, (axis, other))
        return (Geometry(out.h, out.w, T.unsized(x.layout)),
                window.fields((axis, other)))
    if not elsewhere and len(atoms) == 2 and all(a[0] in ("h", "w") and a[1] == 1
                                                 for a in atoms) \
            and atoms[0][0] != atoms[1][0] and atoms[1][2] is not None \
            and k == s and p == 0 and d == 1 and atoms[1][2] % k == 0:
        outer, inner = atoms[0][0], atoms[1][0]
        window = Window(kind, (1, k), (1, k), (0, 0))
        out = window.apply(x, (outer, inner))
        layout = x.layout[:-1] + (((outer, 1, atoms[0][2]), (inner, 1, atoms[1][2] // k)),)
        return Geometry(out.h, out.w, layout), window.fields((outer, inner))
    raise Skip(f"{ctx.where} runs a 1-d {kind} of kernel {k}, stride {s}, padding {p} over "
               f"flattened positions {atoms}; the RF analysis follows one along a single "
               "axis, or over a row-major map only with kernel = stride dividing the row, "
               "no padding (every window within one row)")


def _adaptive(ctx: Ctx, kind: str, output_size: Any) -> Result:
    x = ctx.x
    if not (isinstance(x, Geometry) and x.is_local):
        return GLOBAL, {"kind": kind}
    axes = T.last_axes(x, 2, ctx.where)
    window, out = adaptive(ctx.resolve(output_size), x, axes, ctx.where)
    fields = window.fields(axes) if window is not None else {}
    if out.is_local:
        out = Geometry(out.h, out.w, T.unsized(x.layout))
    return out, {**fields, "kind": kind}


def _linear(ctx: Ctx) -> Result:
    x = ctx.x
    if not (isinstance(x, Geometry) and x.is_local):
        return GLOBAL, {"kind": "linear"}
    fields: dict[str, Any] = {}
    if L.is_spatial(x.layout[-1]):
        if len(x.layout) - 1 in L.intact(x.layout).values():
            raise Skip(f"{ctx.where} is applied to a spatial feature map (it would mix only the "
                       "last axis); flatten or pool globally first")
        # positions in its features: every one (a head layer on a flattened map), or the
        # inner positions of blocks (timm Swin's patch merging, a transform per block): a
        # 1x1 Linear on the map of blocks, as after a space-to-depth
        out = M.consumed(x, {len(x.layout) - 1}, "space_to_depth", ctx.where)
        if out is not None and not (isinstance(out[0], Geometry) and out[0].is_local):
            return out[0], {"kind": "linear"}
        if out is not None:
            x, fields = out[0], {"input": out[0]}
    one = (1, 1)
    return (Geometry(x.h, x.w, L.channel(x.layout, -1, ctx.where)),
            {"kind": "linear", "kernel": one, "stride": one, "padding": (0, 0), "dilation": one,
             **fields})


GATING = {  # products that make a global operand a gate (se_gates="scale")
    operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div,
    torch.true_divide, "mul", "mul_", "div", "div_", "true_divide"}


def elementwise(ctx: Ctx) -> Result:
    """Pointwise ops with broadcasting: merge the inputs (SE gates: see the module doc)."""
    states = [s for s in ctx.tensors if isinstance(s, Geometry)]
    local = [s for s in states if s.is_local]
    if not local:
        return GLOBAL, None
    if ctx.se_gates == "scale" and ctx.node.target in GATING:
        states = local
    layout = L.broadcast([s.layout for s in local], ctx.out_ndim, ctx.where)
    return merge(states, ctx.where, layout), None


def _gate(ctx: Ctx, dims: set[int] | None = None) -> Result:
    """A normalisation by statistics over all positions, or over those in ``dims`` (the
    inner positions of blocks: statistics per block): a gate (see the module doc)."""
    x = ctx.local_x()
    if ctx.se_gates == "scale":
        return x, None
    stats = GLOBAL if dims is None else M.kept(x, dims, ctx.where)
    return (x if stats is None else merge([x, stats], ctx.where)), None


def _layer_norm(ctx: Ctx) -> Result:
    shape = ctx.mod.normalized_shape if ctx.mod is not None else ctx.resolve(
        arg(ctx.node, 1, "normalized_shape", None))
    n = 1 if isinstance(shape, int) else len(shape) if shape is not None else 0
    if not n:
        raise Skip(f"{ctx.where} has no normalized_shape")
    x = ctx.local_x()
    if any(L.is_spatial(d) for d in x.layout[-n:]):
        return _gate(ctx, set(range(len(x.layout) - n, len(x.layout))))
    return x, None


def _along_dim(dim_of: Callable[[Ctx], Any], ordered: bool = False) -> Rule:
    """Softmax-like ops along one dimension: where it holds positions, each reads every
    position there (all of them: global; the inner positions of blocks: its block). An
    ``ordered`` op (cumsum: position t reads those before it) is refused over positions."""
    def rule(ctx: Ctx) -> Result:
        dim = dim_of(ctx)
        if dim is None:
            raise Skip(f"{ctx.where} has no explicit dim")
        x = ctx.local_x()
        d = L.norm_dim(dim, len(x.layout), ctx.where)
        if L.is_spatial(x.layout[d]):
            if ordered:
                raise Skip(f"{ctx.where} accumulates along positions: each reads those "
                           "before it, a field that is not the same at every position")
            out = M.kept(x, {d}, ctx.where)
            if out is not None:
                return out, None
        return elementwise(ctx)
    return rule


def _module_dim(ctx: Ctx) -> Any:
    return ctx.mod.dim


def _arg_dim(index: int, default: Any = None) -> Callable[[Ctx], Any]:
    return lambda ctx: ctx.resolve(arg(ctx.node, index, "dim", default))


_UPSAMPLE_FUNCTIONS = {F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear}


def _upsample(ctx: Ctx) -> Result:
    """A resize (``nn.Upsample``, ``F.interpolate``) by any rational ratio per axis (to a
    size, or by a scale factor; with ``align_corners=True`` the ratio of the sizes less one):
    the classes of paths get per-phase geometry (:mod:`.phases`)."""
    x, node, mod = ctx.local_x(), ctx.node, ctx.mod
    antialias = False
    if mod is not None:
        scale, mode, align = mod.scale_factor, mod.mode, mod.align_corners
        recompute = getattr(mod, "recompute_scale_factor", None)
    else:
        scale = ctx.resolve(arg(node, 2, "scale_factor", None))
        mode = {F.upsample_nearest: "nearest", F.upsample_bilinear: "bilinear"}.get(
            node.target) or ctx.resolve(arg(node, 3, "mode", "nearest"))
        align = True if node.target is F.upsample_bilinear else ctx.resolve(
            arg(node, 4, "align_corners", None))
        recompute = ctx.resolve(arg(node, 5, "recompute_scale_factor", None))
        antialias = bool(ctx.resolve(arg(node, 6, "antialias", False)))
    axes = T.last_axes(x, 2, ctx.where)
    out_shape = ctx.shape(node)
    sizes = list(out_shape[-2:]) if out_shape is not None else [None, None]
    if align:  # the corners' centres map onto each other, whatever the scale factor
        n_in, n_out = ctx.need_shape(ctx.x_node)[-2:], ctx.need_shape(node)[-2:]
        if min(*n_in, *n_out) < 2:
            raise Skip(f"{ctx.where} resizes {tuple(n_in)} to {tuple(n_out)} with "
                       "align_corners=True: a single position has no corners to align")
        ratios, sizes = [Fraction(a - 1, b - 1) for a, b in zip(n_in, n_out)], list(n_out)
    elif scale is not None and not recompute:
        # torch maps positions with 1 / scale_factor, not with the sizes' ratio
        scales = [float(f) for f in (scale if isinstance(scale, (tuple, list)) else (scale,))]
        scales = scales * 2 if len(scales) == 1 else scales
        ratios = [Fraction(1 / f).limit_denominator(1 << 16) for f in scales]
    else:  # from the traced shapes
        n_in, n_out = ctx.need_shape(ctx.x_node)[-2:], ctx.need_shape(node)[-2:]
        ratios = [Fraction(a, b) for a, b in zip(n_in, n_out)]
    if antialias and any(r > 1 for r in ratios):
        raise Skip(f"{ctx.where} downsamples with antialias=True (its taps widen with the "
                   "ratio), which the RF analysis does not follow")
    return _resized(x, axes, ratios, mode, sizes, ctx.where, aligned=bool(align)), None


def _resized(x: Geometry, axes: tuple[str, str], ratios: list[Fraction], mode: str,
             sizes: list[int | None], where: str, aligned: bool = False) -> Geometry:
    """``ratios``: source positions per output position along dims -2, -1 (1 / k: upsampling
    by k); ``sizes``: the output's sizes there when known; ``aligned``: align_corners=True
    (:func:`resize_taps`)."""
    new = {}
    for name, ratio, size in zip(axes, ratios, sizes):
        taps = resize_taps(mode, ratio, aligned)
        if taps is None:
            raise Skip(f"{where} resizes with mode={mode!r}: the RF analysis follows the "
                       "nearest, nearest-exact, (bi)linear and bicubic modes")
        a = x.axis(name)
        if size is None and a.size is not None and ratio.numerator == 1:
            size = a.size * ratio.denominator
        new[name] = resampled(a, ratio.denominator, ratio.numerator, taps, size, name, where)
    return Geometry(new["h"], new["w"], T.unsized(x.layout))


_CONV_TRANSPOSE_FUNCTIONS = (F.conv_transpose2d, torch.conv_transpose2d)


def _conv_transpose(ctx: Ctx) -> Result:
    """A transposed conv (``nn.ConvTranspose2d``, ``F.conv_transpose2d``) with kernel k, stride
    s and padding p along an axis: output position t receives the input positions i with
    ``t = s i - p + kk`` (kk < k), i.e. ``ceil((t + p - k + 1) / s) .. floor((t + p) / s)``: a
    resize by s with those taps, per phase (:mod:`.phases`); a row of kind ``conv_transpose``."""
    node, mod, where = ctx.node, ctx.mod, ctx.where
    if mod is not None:
        k, s, p, d = mod.kernel_size, mod.stride, mod.padding, mod.dilation
    else:
        shape = ctx.weight_shape(arg(node, 1, "weight", None))
        if shape is None:
            raise Skip(f"{where}: the kernel size of a functional conv_transpose2d is known only "
                       "when its weight is a parameter of the model or its shape was traced")
        k = tuple(shape[-2:])
        s, p, d = (pair(ctx.resolve(arg(node, i, name, default)), name, where)
                   for i, name, default in ((3, "stride", 1), (4, "padding", 0),
                                            (7, "dilation", 1)))
    x = ctx.x
    local = isinstance(x, Geometry) and x.is_local
    axes = T.last_axes(x, 2, where) if local else ("h", "w")
    fields = Window("conv_transpose", tuple(k), tuple(s), tuple(p), tuple(d)).fields(axes)
    if not local:
        return GLOBAL, fields
    if tuple(d) != (1, 1):
        raise Skip(f"{where} is a transposed conv with dilation {tuple(d)}; the RF analysis "
                   "follows dilation 1")
    if any(k[i] < s[i] for i in range(2)):
        raise Skip(f"{where} is a transposed conv whose kernel {tuple(k)} is smaller than its "
                   f"stride {tuple(s)}: some output positions read no input")
    out_shape = ctx.shape(node)
    new = {}
    for i, name in enumerate(axes):
        def taps(t: int, k: int = k[i], s: int = s[i], p: int = p[i]) -> tuple[int, int]:
            return -(-(t + p - k + 1) // s), (t + p) // s
        size = None if out_shape is None else int(out_shape[-2 + i])
        new[name] = resampled(x.axis(name), s[i], 1, taps, size, name, where)
    return Geometry(new["h"], new["w"], T.unsized(x.layout)), fields


def _factor(ctx: Ctx, field: str) -> int:
    """``field`` of a PixelShuffle / PixelUnshuffle module, or the function's second argument."""
    r = getattr(ctx.mod, field) if ctx.mod is not None else ctx.resolve(
        arg(ctx.node, 1, field, None))
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise Skip(f"{ctx.where} has no integer {field} (got {r!r})")
    return r


def _pixel_shuffle(ctx: Ctx) -> Result:
    """Depth to space by r: where the channels hold the offsets of r x r blocks (a pixel
    unshuffle or a non-overlapping unfold before it, nothing mixed in between), the map
    they came from; else output position q reads input position floor(q / r) (from one of
    r^2 channels), the positions of a nearest upsampling by r."""
    x = ctx.local_x()
    r = _factor(ctx, "upscale_factor")
    back = L.depth_to_space(x.layout, r)
    if back is not None:
        return Geometry(x.h, x.w, back), None
    return _resized(x, T.last_axes(x, 2, ctx.where), [Fraction(1, r)] * 2, "nearest",
                    [None, None], ctx.where), None


def _pixel_unshuffle(ctx: Ctx) -> Result:
    """Space to depth by r: each r x r block's offsets move into the channels, positions
    still (:func:`layout.space_to_depth`): a conv over them reads the r x r block, a window
    of kernel r and stride r, as the strided conv it replaces; a pixel shuffle puts them
    back. Where the map's size is unknown or not a multiple of r, that window at once (not
    a layer of the table)."""
    x = ctx.local_x()
    r = _factor(ctx, "downscale_factor")
    axes = T.last_axes(x, 2, ctx.where)
    blocks = L.space_to_depth(x.layout, (r, r), [x.axis(a).size for a in axes])
    if blocks is not None:
        return Geometry(x.h, x.w, blocks), None
    return _window(ctx, Window("space_to_depth", (r, r), (r, r), (0, 0)))[0], None


def _constant(ctx: Ctx) -> Result:
    return None, None


def _self(ctx: Ctx) -> Result:
    """``x.type_as(other)``: x in other's dtype; other lends no positions (RoPE tables cast to
    the dtype of the tokens they rotate)."""
    return ctx.state(ctx.node.args[0]), None


def _unsupported_hint() -> str:
    return ("Supported: Conv2d, ConvTranspose2d, Conv3d with a 1-wide third axis, Conv1d of "
            "kernel 1, Max/Avg/AdaptivePool2d, Linear, norms, activations, dropout, stochastic "
            "depth, identity, elementwise ops, cat/stack/chunk, flatten/view/reshape/permute/"
            "transpose, indexing, padding, matmul/einsum/attention, global mean, resizes "
            "(interpolate / Upsample: nearest, (bi)linear, bicubic), pixel (un)shuffle")


_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.SyncBatchNorm, nn.LocalResponseNorm, nn.Softmax2d, StochasticDepth,
)
GATE_MODULES = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)  # normalisations: gates
_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
    operator.isub, operator.imul, operator.itruediv, operator.pow, torch.add, torch.sub,
    torch.mul, torch.div, torch.true_divide, torch.neg, torch.relu, torch.relu_, torch.sigmoid,
    torch.tanh, torch.clamp, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.pow, torch.abs,
    torch.erf, torch.maximum, torch.minimum, torch.where, torch.masked_fill, torch.addcmul,
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid, F.tanh, F.dropout,
    F.dropout1d, F.dropout2d, F.alpha_dropout, F.batch_norm, F.local_response_norm,
    stochastic_depth,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
    "clamp_max", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide",
    "neg", "exp", "log", "sqrt", "rsqrt", "pow", "abs", "masked_fill", "masked_fill_",
    "clone", "contiguous", "detach", "float", "double", "half", "bfloat16", "to",
}
_CONSTANT_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
                       torch.rand_like, torch.randn_like}
_CONSTANT_METHODS = {"new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}
META_METHODS = {"size", "dim", "numel", "get_device", "stride", "nelement", "ndimension",
                "is_contiguous", "element_size", "data_ptr", "is_floating_point"}
META_ATTRS = T.META_ATTRS

MODULE_RULES: list[tuple[Any, Rule]] = [
    (nn.Linear, _linear),
    ((nn.LayerNorm, nn.RMSNorm), _layer_norm),
    (GATE_MODULES, _gate),
    ((nn.Softmax, nn.LogSoftmax), _along_dim(_module_dim)),
    ((nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
      nn.CircularPad2d), T.pad),
    ((nn.Flatten, nn.Unflatten), T.reshape),
    (nn.Upsample, _upsample),
    (nn.PixelShuffle, _pixel_shuffle),
    (nn.PixelUnshuffle, _pixel_unshuffle),
    ((nn.AvgPool1d, nn.MaxPool1d), _pool1d),
    (_ELEMENTWISE_MODULES, elementwise),
    *B.MODULE_RULES,
]
FUNCTION_RULES: dict[Any, Rule] = {
    **{f: elementwise for f in _ELEMENTWISE_FUNCTIONS},
    **{f: _constant for f in _CONSTANT_FUNCTIONS},
    F.linear: _linear, F.layer_norm: _layer_norm, F.rms_norm: _layer_norm, F.group_norm: _gate,
    F.instance_norm: _gate,
    F.softmax: _along_dim(_arg_dim(1)), F.log_softmax: _along_dim(_arg_dim(1)),
    torch.softmax: _along_dim(_arg_dim(1)), torch.log_softmax: _along_dim(_arg_dim(1)),
    F.normalize: _along_dim(_arg_dim(2, 1)), torch.cumsum: _along_dim(_arg_dim(1), ordered=True),
    **{f: _upsample for f in _UPSAMPLE_FUNCTIONS},
    F.pixel_shuffle: _pixel_shuffle, F.pixel_unshuffle: _pixel_unshuffle,  # torch.pixel_*
    **T.FUNCTION_RULES, **M.FUNCTION_RULES, **B.FUNCTION_RULES,
}
METHOD_RULES: dict[str, Rule] = {
    **{m: elementwise for m in _ELEMENTWISE_METHODS},
    **{m: _constant for m in _CONSTANT_METHODS},
    "softmax": _along_dim(_arg_dim(1)), "log_softmax": _along_dim(_arg_dim(1)),
    "cumsum": _along_dim(_arg_dim(1), ordered=True), "type_as": _self,
    **T.METHOD_RULES, **M.METHOD_RULES, **B.METHOD_RULES,
}


def step(ctx: Ctx) -> Result:
    """Output state of one node and its record fields (None for non-layer nodes)."""
    node, mod = ctx.node, ctx.mod
    window = module_window(mod, ctx.where) if mod is not None else (
        function_window(node, ctx.weight_shape, ctx.where) if node.op == "call_function" else None)
    if window is not None:
        return _window(ctx, window)
    if isinstance(mod, nn.Conv3d):
        return _conv3d(ctx)
    if isinstance(mod, nn.Conv1d):
        return _conv1d(ctx)
    if isinstance(mod, nn.ConvTranspose2d) or (
            node.op == "call_function" and node.target in _CONV_TRANSPOSE_FUNCTIONS):
        return _conv_transpose(ctx)
    pooled = adaptive_kind(node, mod)
    if pooled is not None:
        return _adaptive(ctx, *pooled)
    if isinstance(mod, nn.Linear) or (node.op == "call_function" and node.target is F.linear):
        return _linear(ctx)
    for recorded in (M.global_mean, M.attention):
        result = recorded(ctx)
        if result is not None:
            return result
    if all(isinstance(s, Geometry) and not s.is_local for s in ctx.tensors):
        return GLOBAL, None  # anything computed from global features stays global
    rule = _lookup(ctx)
    if rule is None:
        raise Skip(f"{ctx.where} is not supported: it may change the spatial geometry. "
                   + _unsupported_hint())
    if not (isinstance(ctx.x, Geometry)) and rule is not _self:
        raise Skip(f"{ctx.where} has no feature-map input")
    return rule(ctx)


_MOVES = (T.permute, T.transpose, T.reshape)


def moves(ctx: Ctx) -> bool:
    """Whether the node only moves dimensions around (permute, transpose, view / reshape /
    flatten / squeeze): it reads its inputs unsettled (:func:`layout.settle`)."""
    return _lookup(ctx) in _MOVES


def _lookup(ctx: Ctx) -> Rule | None:
    node, mod = ctx.node, ctx.mod
    if mod is not None:
        return next((rule for types, rule in MODULE_RULES if isinstance(mod, types)), None)
    if node.op == "call_function":
        try:
            return FUNCTION_RULES.get(node.target) or M.leaf_functions().get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return METHOD_RULES.get(node.target)
    return None


def layer_kind(ctx: Ctx) -> dict[str, Any] | None:
    """Kind of a conv/pool/linear/attention node (for an Unsupported record), else None."""
    node, mod = ctx.node, ctx.mod
    if mod is not None:
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return {"kind": "conv"}
        if isinstance(mod, nn.ConvTranspose2d):
            return {"kind": "conv_transpose"}
        if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.MaxPool1d, nn.AvgPool1d,
                            *ADAPTIVE_MODULES)):
            return {"kind": "pool"}
        if isinstance(mod, nn.Linear):
            return {"kind": "linear"}
        if isinstance(mod, nn.MultiheadAttention):
            return {"kind": "attention"}
        return None
    t = node.target if node.op == "call_function" else None
    if t in M.ATTENTION_FUNCTIONS:
        return {"kind": "attention"}
    if t in (F.conv2d, torch.conv2d):
        return {"kind": "conv"}
    if t in _CONV_TRANSPOSE_FUNCTIONS:
        return {"kind": "conv_transpose"}
    if t in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d, *ADAPTIVE_FUNCTIONS):
        return {"kind": "pool"}
    if t is F.linear:
        return {"kind": "linear"}
    return None
