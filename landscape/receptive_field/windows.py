"""The sliding windows of conv / pool modules and functions, and adaptive pooling.

Settings are read per axis ``(h, w)`` (a 1x7 conv has kernel ``(1, 7)``). ``padding="same"``
pads ``d(k-1)`` in total, ``total // 2`` on the left/top (torch's rule). Adaptive pooling of
n positions to m is a window ``k = s = n / m`` when m divides n; otherwise (uneven windows,
or more outputs than inputs) output t reads torch's positions ``floor(t n / m) ..
ceil((t + 1) n / m) - 1``, a resampling whose positions repeat every ``m / gcd(n, m)`` outputs
(:mod:`.phases`): exact per phase, as a resize.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from landscape.receptive_field.geometry import (
    GLOBAL, Axis, Geometry, Skip, Window, arg, pair, resampled,
)

POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d)
ADAPTIVE_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
CONV_FUNCTIONS = (F.conv2d, torch.conv2d)
POOL_FUNCTIONS = (F.max_pool2d, torch.max_pool2d, F.avg_pool2d)
ADAPTIVE_FUNCTIONS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d)


def conv_window(weight_shape: tuple[int, ...], stride: Any, padding: Any, dilation: Any,
                where: str) -> Window:
    if len(weight_shape) != 4:
        raise Skip(f"{where} is not a 2-d convolution")
    k = pair(tuple(weight_shape[-2:]), "kernel", where)
    d = pair(dilation, "dilation", where)
    s = pair(stride, "stride", where)
    if isinstance(padding, str):
        if padding == "valid":
            return Window("conv", k, s, (0, 0), d)
        total = tuple(d[i] * (k[i] - 1) for i in range(2))  # "same"
        return Window("conv", k, s, (total[0] // 2, total[1] // 2), d, pad_total=total)
    return Window("conv", k, s, pair(padding, "padding", where), d)


def module_window(mod: nn.Module, where: str) -> Window | None:
    """The window of a Conv2d / MaxPool2d / AvgPool2d module, else None."""
    if isinstance(mod, nn.Conv2d):  # any padding_mode: same positions, other border values
        return conv_window(tuple(mod.weight.shape), mod.stride, mod.padding, mod.dilation, where)
    if isinstance(mod, POOL_MODULES):
        kind = "max_pool" if isinstance(mod, nn.MaxPool2d) else "avg_pool"
        k = pair(mod.kernel_size, "kernel", where)
        s = pair(mod.stride if mod.stride is not None else mod.kernel_size, "stride", where)
        d = pair(getattr(mod, "dilation", 1), "dilation", where)
        return Window(kind, k, s, pair(mod.padding, "padding", where), d,
                      ceil_mode=bool(mod.ceil_mode))
    return None


def function_window(node: fx.Node, weight_shape: Any, where: str) -> Window | None:
    """The window of a functional conv2d / max_pool2d / avg_pool2d node, else None.
    ``weight_shape(node)`` gives the shape of a conv's weight argument (or None)."""
    t = node.target
    if t in CONV_FUNCTIONS:
        shape = weight_shape(arg(node, 1, "weight", None))
        if shape is None:
            raise Skip(f"{where}: the kernel size of a functional conv2d is known only when its "
                       "weight is a parameter of the model or its shape was traced")
        return conv_window(tuple(shape), arg(node, 3, "stride", 1), arg(node, 4, "padding", 0),
                           arg(node, 5, "dilation", 1), where)
    if t in POOL_FUNCTIONS:
        kind = "avg_pool" if t is F.avg_pool2d else "max_pool"
        k = pair(arg(node, 1, "kernel_size", None), "kernel", where)
        stride = arg(node, 2, "stride", None)
        s = k if stride is None or stride == [] or stride == () else pair(stride, "stride", where)
        p = pair(arg(node, 3, "padding", 0), "padding", where)
        if kind == "max_pool":
            if arg(node, 6, "return_indices", False):
                raise Skip(f"{where} returns indices")
            d = pair(arg(node, 4, "dilation", 1), "dilation", where)
            return Window(kind, k, s, p, d, ceil_mode=bool(arg(node, 5, "ceil_mode", False)))
        return Window(kind, k, s, p, (1, 1), ceil_mode=bool(arg(node, 4, "ceil_mode", False)))
    return None


def adaptive_kind(node: fx.Node, mod: nn.Module | None) -> tuple[str, Any] | None:
    """``(kind, output_size)`` of an adaptive pooling node, else None."""
    if isinstance(mod, ADAPTIVE_MODULES):
        avg = isinstance(mod, nn.AdaptiveAvgPool2d)
        return ("adaptive_avg_pool" if avg else "adaptive_max_pool"), mod.output_size
    if node.op == "call_function" and node.target in ADAPTIVE_FUNCTIONS:
        avg = node.target is F.adaptive_avg_pool2d
        return (("adaptive_avg_pool" if avg else "adaptive_max_pool"),
                arg(node, 1, "output_size", None))
    return None


def adaptive(output_size: Any, g: Geometry, axes: tuple[str, str], where: str
             ) -> tuple[Window | None, Geometry]:
    """Window and output geometry of adaptive pooling to ``output_size`` along ``axes``."""
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    if len(sizes) == 1:
        sizes = (sizes[0], sizes[0])
    found: list[Axis] = [g.axis(a) for a in axes]
    out = [found[i].size if sizes[i] is None else sizes[i] for i in range(2)]
    if not g.is_local or 1 in out:  # one axis pooled whole: a per-axis global RF
        return None, GLOBAL
    if any(isinstance(m, fx.Node) for m in out) or any(a.size is None for a in found):
        raise Skip(f"{where} pools to {tuple(sizes)}; its window depends on the input size, "
                   "so pass input_size")
    if any(a.size == 0 for a in found):
        return None, g
    if all(a.size % m == 0 for a, m in zip(found, out)):
        k = tuple(a.size // m for a, m in zip(found, out))
        window = Window("adaptive_pool", k, k, (0, 0))
        return window, window.apply(g, axes)
    new = {name: _uneven(a, m, name, where) for name, a, m in zip(axes, found, out)}
    return None, Geometry(new["h"], new["w"], g.layout)


def _uneven(a: Axis, m: int, name: str, where: str) -> Axis:
    """Axis ``name`` of ``a.size`` positions adaptively pooled to ``m``: output t reads
    torch's window ``floor(t n / m) .. ceil((t + 1) n / m) - 1`` (n = ``a.size``)."""
    n = a.size
    g = math.gcd(n, m)

    def taps(t: int) -> tuple[int, int]:
        return t * n // m, -(-(t + 1) * n // m) - 1
    return resampled(a, m // g, n // g, taps, m, name, where)
