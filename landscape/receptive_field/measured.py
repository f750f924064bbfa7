"""Gradient-measured receptive field: the input-gradient bounding box of one output position.

A unit gradient is put at the spatial centre position ``(m // 2, m // 2)`` of every channel of
a layer's output (m = its spatial size; for even m this is the lower/right of the two middle
positions) and back-propagated to the input; the RF is the bounding box of the non-zero input
gradient. Computed on a float64 copy of the model, so the caller's model is never touched and
no gradient underflows to zero.

Modes:

* ``"linearised"`` (what the paper's tool did): ReLU and BatchNorm pass the gradient straight
  through (identity backward), max-pool backward is replaced by the average-pool backward with
  the same kernel/stride/padding (and dilation), the input is all ones. The network is then
  affine, and for an unclipped box the result equals the analytic union of all paths
  (= r_max when the paths are centred alike). Other nonlinearities keep their own gradients.
* ``"plain"``: the real model in eval mode on a seeded standard-normal input. ReLU zeros and
  max-pool argmax routing can only remove gradient paths, so the box can shrink below r_max.

With an even effective kernel the RF is not centred on its output position; the box position
follows the analytic ``[lo + c*jump, hi + c*jump]`` (c the seeded position), which the result
reports as ``analytic_first/analytic_last``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules.utils import _pair

from landscape.receptive_field.geometry import (
    Axis, Geometry, LayerRecord, Unsupported, UnsupportedModelError,
)
from landscape.receptive_field.graph import input_channels, propagate, trace_model

MODES = ("linearised", "plain")


@dataclass(frozen=True)
class MeasuredReceptiveField:
    """Bounding box of the non-zero input gradient (pixels).

    ``top/left`` are the first input row/column with a non-zero gradient (None when the
    gradient vanished everywhere, then ``height = width = 0``). ``position`` is the seeded
    output row = column. ``analytic_first/last`` bound the analytic RF of that position along
    each axis and ``analytic_r_max`` is the analytic r_max of the layer. ``clipped`` means the
    analytic box does not fit inside the input, so the measured box is only a lower bound.
    """

    layer: str
    mode: str
    input_size: int
    position: int
    height: int
    width: int
    top: int | None
    left: int | None
    analytic_r_max: int
    analytic_first: int
    analytic_last: int
    clipped: bool

    @property
    def size(self) -> int:
        return max(self.height, self.width)


def straight_through(value: Tensor, x: Tensor) -> Tensor:
    """``value`` in the forward pass, identity gradient to ``x`` in the backward pass."""
    return value.detach() + (x - x.detach())


class IdentityGrad(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            value = self.inner(x.detach().clone())  # clone: the inner op may be in-place
        return straight_through(value, x)


def _st_relu(x: Tensor, *_: object, **__: object) -> Tensor:
    return straight_through(torch.relu(x.detach()), x)


def _st_batch_norm(x: Tensor, *args: object, **kwargs: object) -> Tensor:
    with torch.no_grad():
        value = F.batch_norm(x.detach(), *args, **kwargs)
    return straight_through(value, x)


def _st_max_pool2d(x: Tensor, kernel_size: object, stride: object = None, padding: object = 0,
                   dilation: object = 1, ceil_mode: bool = False,
                   return_indices: bool = False) -> Tensor:
    """Max-pool values with the gradient of an average over the same windows.

    The average is a depthwise conv with a ``1/(kh*kw)`` kernel (same kernel, stride, padding
    and dilation, which ``avg_pool2d`` lacks), zero-padded on the bottom/right so that it has
    the max-pool's output size in ``ceil_mode`` too.
    """
    if return_indices:
        raise UnsupportedModelError("linearised mode does not support max-pools that return "
                                    "indices; use mode='plain'")
    stride = kernel_size if stride is None or stride == [] else stride
    with torch.no_grad():
        value = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, padding, dilation))
    out_h, out_w = value.shape[-2:]
    extra_h = max(0, (out_h - 1) * sh + dh * (kh - 1) + 1 - (x.shape[-2] + 2 * ph))
    extra_w = max(0, (out_w - 1) * sw + dw * (kw - 1) + 1 - (x.shape[-1] + 2 * pw))
    channels = x.shape[1]
    weight = x.new_full((channels, 1, kh, kw), 1.0 / (kh * kw))
    padded = F.pad(x, (pw, pw + extra_w, ph, ph + extra_h))
    avg = F.conv2d(padded, weight, stride=(sh, sw), dilation=(dh, dw), groups=channels)
    avg = avg[..., :out_h, :out_w]
    return value + (avg - avg.detach())


class MaxValueAvgGrad(nn.Module):
    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        p = self.pool
        return _st_max_pool2d(x, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode)


def linearise(gm: fx.GraphModule) -> None:
    """Swap ReLU/BN/max-pool of ``gm`` (a private copy) for their linearised versions."""
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.MaxPool2d):
                new: nn.Module = MaxValueAvgGrad(mod)
            elif isinstance(mod, (nn.ReLU, nn.BatchNorm2d, nn.SyncBatchNorm)):
                new = IdentityGrad(mod)
            else:
                continue
            parent, _, child = node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, child, new)
        elif node.op == "call_function" and node.target in (F.relu, F.relu_, torch.relu,
                                                             torch.relu_):
            node.target, node.args, node.kwargs = _st_relu, node.args[:1], {}
        elif node.op == "call_method" and node.target in ("relu", "relu_"):
            node.op, node.target, node.args = "call_function", _st_relu, node.args[:1]
        elif node.op == "call_function" and node.target is F.batch_norm:
            node.target = _st_batch_norm
        elif node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
            node.target = _st_max_pool2d


def _select(records: list[LayerRecord], layer: str | None) -> LayerRecord:
    """The record of ``layer`` (default: last conv) among layers with a finite RF."""
    candidates = [r for r in records if isinstance(r.out, Unsupported) or (
        isinstance(r.out, Geometry) and math.isfinite(r.out.r_max))]
    if layer is None:
        convs = [r for r in candidates if r.kind == "conv"]
        if not convs:
            raise ValueError("the model has no Conv2d layer with a local receptive field")
        rec = convs[-1]
    else:
        matches = [r for r in candidates if r.name == layer]
        if not matches:
            names = ", ".join(r.name for r in candidates)
            raise ValueError(f"unknown layer {layer!r}; valid layers: {names}")
        rec = matches[0]
    if isinstance(rec.out, Unsupported):
        raise UnsupportedModelError(rec.out.reason)
    return rec


def _box(gm: fx.GraphModule, node: str, n: int) -> tuple[Axis, int, int, int]:
    """Geometry (one axis) of ``node`` at input size n, the seeded position and its box."""
    g = propagate(gm, n)[0][node]
    if not isinstance(g, Geometry) or not g.h.size:
        raise ValueError(f"input_size {n} is too small: the output of the layer vanishes")
    a = _square_axis(g)
    c = a.size // 2
    return (a, c, *a.span(c))


def _square_axis(g: Geometry) -> Axis:
    if g.h != g.w:
        raise ValueError("the measured receptive field needs a layer whose geometry is the same "
                         "along H and W (a square box); this layer's differs (rectangular "
                         "kernels or strides)")
    return g.h


def _default_input_size(gm: fx.GraphModule, node: str, span: int) -> int:
    """Smallest n whose analytic box lies strictly inside the input (>= 1 pixel margin)."""
    for n in range(span + 2, 4 * span + 64):
        try:
            _, _, first, last = _box(gm, node, n)
        except ValueError:
            continue
        if first >= 1 and last <= n - 2:
            return n
    raise ValueError(f"found no input size up to {4 * span + 64} that holds the RF of the "
                     "layer's centre position; pass input_size")


def measure_receptive_field(
    model: nn.Module,
    layer: str | None = None,
    mode: str = "linearised",
    input_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> MeasuredReceptiveField:
    """Gradient-measured RF of ``layer`` (default: the last conv) on a square input.

    ``input_size`` defaults to the smallest size whose analytic RF box of the centre position
    lies strictly inside the input, so the box is not clipped. ``seed`` draws the plain-mode
    input. The model is copied (float64, eval, on ``device``); the caller's model is untouched.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or input_size < 1):
        raise ValueError(f"input_size must be a positive integer or None, got {input_size!r}")
    work = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    work.requires_grad_(False)
    gm = trace_model(work)
    rec = _select(propagate(gm, None)[1], layer)
    axis = _square_axis(rec.out)
    span = axis.hi - axis.lo + 1
    n = input_size if input_size is not None else _default_input_size(gm, rec.node, span)
    _, c, first, last = _box(gm, rec.node, n)

    if mode == "linearised":
        linearise(gm)
    output = next(node for node in gm.graph.nodes if node.op == "output")
    output.args = (next(node for node in gm.graph.nodes if node.name == rec.node),)
    gm.graph.eliminate_dead_code()
    gm.recompile()

    channels = input_channels(model, gm.graph)
    if channels is None:
        raise ValueError("cannot infer the number of input channels: the model has no Conv2d")
    shape = (1, channels, n, n)
    if mode == "linearised":
        x = torch.ones(shape, dtype=torch.float64, device=device)
    else:
        gen = torch.Generator(device=device).manual_seed(seed)
        x = torch.randn(shape, generator=gen, dtype=torch.float64, device=device)
    rows, cols = _nonzero_gradient_extent(gm, x, c)
    return MeasuredReceptiveField(
        layer=rec.name, mode=mode, input_size=n, position=c,
        height=rows[1] - rows[0] + 1 if rows else 0, width=cols[1] - cols[0] + 1 if cols else 0,
        top=rows[0] if rows else None, left=cols[0] if cols else None,
        analytic_r_max=int(rec.out.r_max), analytic_first=first, analytic_last=last,
        clipped=first < 0 or last > n - 1,
    )


def _nonzero_gradient_extent(gm: fx.GraphModule, x: Tensor, c: int
                             ) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """First/last input row and column with a non-zero gradient of ``sum_ch y[0, ch, c, c]``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = gm(x)
        if not (torch.is_tensor(y) and y.dim() == 4):
            raise ValueError("the selected layer does not output a (batch, C, H, W) feature map")
        seed_grad = torch.zeros_like(y)
        seed_grad[0, :, c, c] = 1.0
        (grad,) = torch.autograd.grad(y, x, seed_grad)
    nonzero = grad[0].ne(0).any(dim=0)
    rows = nonzero.any(dim=1).nonzero().flatten().tolist()
    cols = nonzero.any(dim=0).nonzero().flatten().tolist()
    return ((rows[0], rows[-1]) if rows else None), ((cols[0], cols[-1]) if cols else None)

