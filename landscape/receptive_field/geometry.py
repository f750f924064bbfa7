"""Receptive-field geometry of one tensor and what one conv/pool/merge does to it.

One spatial axis, square layers (Araujo et al., Distill 2019; Richter & Pal, rfa-toolbox):

* ``jump`` j: input pixels between neighbouring positions of the map (Araujo's effective stride);
* ``r_min`` / ``r_max``: smallest / largest RF size over all input-to-node paths;
* ``lo`` / ``hi``: first / last input pixel reached by any path from output position 0, so
  position u covers ``[lo + u*j, hi + u*j]``; ``-lo`` is Araujo's effective padding;
* ``size``: spatial size of the map for the given input size (None when none was given).

A conv/pool with effective kernel K = d(k-1)+1, stride s and left padding p maps
``r -> r + (K-1) j``, ``j -> j s``, ``lo -> lo - p j``, ``hi -> hi + (K-1-p) j`` and
``size -> floor((size + p_total - K) / s) + 1``. Merges (activations, BN, dropout, add/mul,
channel cat) take r_min = min, r_max = max, [lo, hi] = union over inputs; their jumps must
agree. Global pooling and Linear make every output depend on the whole input: r = inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

INF = math.inf


class UnsupportedModelError(ValueError):
    """The model cannot be traced, or uses an op whose effect on the RF is unknown."""


@dataclass(frozen=True)
class Geometry:
    """RF geometry of one tensor; ``r_min == inf`` means every path is global."""

    jump: int | None
    r_min: float
    r_max: float
    lo: int | None
    hi: int | None
    size: int | None

    @property
    def is_local(self) -> bool:
        return self.r_min < INF


GLOBAL = Geometry(jump=None, r_min=INF, r_max=INF, lo=None, hi=None, size=None)


class Flat:
    """Spatial axes flattened into features: geometry is lost until a Linear mixes everything."""


FLAT = Flat()


@dataclass(frozen=True)
class Unsupported:
    reason: str


State = Geometry | Flat | Unsupported | None  # None: a constant or non-tensor value


@dataclass(frozen=True)
class LayerRecord:
    """One conv/pool/linear op in forward order with its input and output state."""

    name: str  # module path, or the fx node name for functional ops
    node: str
    kind: str
    kernel: int | None
    stride: int | None
    padding: int | None  # left (= top) padding
    dilation: int | None
    inp: State
    out: State


class Skip(Exception):
    """Internal: the current node is unsupported; the message says why."""


def arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def square(value: Any, what: str, where: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise Skip(f"{where} has a non-square {what} {tuple(value)}; only square "
                       "kernels/strides/paddings/dilations are supported")
        value = value[0]
    if value is None or isinstance(value, fx.Node):
        raise Skip(f"{where} has a {what} that is unset or computed at run time")
    return int(value)


@dataclass(frozen=True)
class Window:
    kind: str
    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    pad_total: int | None = None  # None: 2 * padding
    ceil_mode: bool = False

    def apply(self, g: Geometry) -> Geometry:
        if not g.is_local:
            return GLOBAL
        k_eff = self.dilation * (self.kernel - 1) + 1
        j = g.jump
        size = None
        if g.size is not None:
            total = 2 * self.padding if self.pad_total is None else self.pad_total
            size = pooled_size(g.size, k_eff, self.stride, total, self.padding, self.ceil_mode)
        return Geometry(
            jump=j * self.stride, r_min=g.r_min + (k_eff - 1) * j, r_max=g.r_max + (k_eff - 1) * j,
            lo=g.lo - self.padding * j, hi=g.hi + (k_eff - 1 - self.padding) * j, size=size,
        )


def pooled_size(n: int, k_eff: int, s: int, total: int, left: int, ceil_mode: bool) -> int:
    """Output size of a sliding window (torch's rule, including ceil_mode); 0 = vanished."""
    if n <= 0:
        return 0
    span = n + total - k_eff
    if span < 0:
        return 0
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + left:
        out -= 1
    return max(out, 0)


def _conv_window(weight_shape: tuple[int, ...], stride: Any, padding: Any, dilation: Any,
                 where: str) -> Window:
    if len(weight_shape) != 4:
        raise Skip(f"{where} is not a 2-d convolution")
    k = square(tuple(weight_shape[-2:]), "kernel", where)
    d = square(dilation, "dilation", where)
    s = square(stride, "stride", where)
    if isinstance(padding, str):
        if padding == "valid":
            return Window("conv", k, s, 0, d)
        total = d * (k - 1)  # "same": torch pads total // 2 on the left, the rest on the right
        return Window("conv", k, s, total // 2, d, pad_total=total)
    return Window("conv", k, s, square(padding, "padding", where), d)


def module_window(mod: nn.Module, where: str) -> Window | None:
    if isinstance(mod, nn.Conv2d):
        return _conv_window(tuple(mod.weight.shape), mod.stride, mod.padding, mod.dilation, where)
    if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
        kind = "max_pool" if isinstance(mod, nn.MaxPool2d) else "avg_pool"
        k = square(mod.kernel_size, "kernel", where)
        s = square(mod.stride if mod.stride is not None else mod.kernel_size, "stride", where)
        d = square(getattr(mod, "dilation", 1), "dilation", where)
        return Window(kind, k, s, square(mod.padding, "padding", where), d,
                       ceil_mode=bool(mod.ceil_mode))
    return None


def function_window(node: fx.Node, gm: fx.GraphModule, where: str) -> Window | None:
    t = node.target
    if t in (F.conv2d, torch.conv2d):
        weight = arg(node, 1, "weight", None)
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            raise Skip(f"{where}: the kernel size of a functional conv2d is known only when its "
                       "weight is a parameter of the model")
        shape = tuple(_get_attr(gm, weight.target).shape)
        return _conv_window(shape, arg(node, 3, "stride", 1), arg(node, 4, "padding", 0),
                            arg(node, 5, "dilation", 1), where)
    if t in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d):
        kind = "avg_pool" if t is F.avg_pool2d else "max_pool"
        k = square(arg(node, 1, "kernel_size", None), "kernel", where)
        stride = arg(node, 2, "stride", None)
        s = k if stride is None or stride == [] else square(stride, "stride", where)
        p = square(arg(node, 3, "padding", 0), "padding", where)
        if kind == "max_pool":
            if arg(node, 6, "return_indices", False):
                raise Skip(f"{where} returns indices")
            d = square(arg(node, 4, "dilation", 1), "dilation", where)
            return Window(kind, k, s, p, d, ceil_mode=bool(arg(node, 5, "ceil_mode", False)))
        return Window(kind, k, s, p, 1, ceil_mode=bool(arg(node, 4, "ceil_mode", False)))
    return None


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj



def merge(states: list[Geometry | Flat], where: str) -> Geometry | Flat:
    if any(isinstance(s, Flat) for s in states):
        if all(isinstance(s, Flat) or not s.is_local for s in states):
            return FLAT
        raise Skip(f"{where} combines a flattened tensor with a feature map")
    geoms = [s for s in states if isinstance(s, Geometry)]
    local = [g for g in geoms if g.is_local]
    if not local:
        return GLOBAL
    jumps = sorted({g.jump for g in local})
    if len(jumps) > 1:
        raise Skip(f"{where} merges feature maps with different jumps {jumps}: their "
                   "positions are not aligned, so the RF of the result is undefined")
    sizes = [g.size for g in local]
    return Geometry(
        jump=jumps[0], r_min=min(g.r_min for g in geoms), r_max=max(g.r_max for g in geoms),
        lo=min(g.lo for g in local), hi=max(g.hi for g in local),
        size=None if None in sizes else max(sizes),
    )


def spatial_dims(dims: Any) -> set[int]:
    dims = dims if isinstance(dims, (tuple, list)) else [dims]
    return {int(d) % 4 for d in dims}


def adaptive(output_size: Any, g: Geometry, where: str) -> tuple[Window | None, Geometry]:
    out = square(output_size, "output size", where)
    if out == 1 or not g.is_local:
        return None, GLOBAL
    if g.size is None:
        raise Skip(f"{where} pools to {out}x{out}; its window depends on the input size, "
                   "so pass input_size")
    if g.size == 0:
        return None, replace(g, size=0)
    if g.size % out:
        raise Skip(f"{where} pools {g.size} positions to {out} with uneven windows")
    k = g.size // out
    window = Window("adaptive_pool", k, k, 0)
    return window, window.apply(g)

