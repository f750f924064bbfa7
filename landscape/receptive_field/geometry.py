"""Receptive-field geometry of one tensor, per spatial axis, and what a window op does to it.

Per axis (H and W separately; Araujo et al., Distill 2019; Richter & Pal, rfa-toolbox):

* ``jump`` j: input pixels between neighbouring positions of the map (Araujo's effective stride);
* ``r_min`` / ``r_max``: smallest / largest RF size (pixels) over all input-to-node paths;
* ``lo`` / ``hi``: first / last input pixel reached by any path from output position 0, so
  position u covers ``[lo + u*j, hi + u*j]``; ``-lo`` is Araujo's effective padding;
* ``size``: number of positions of the map for the given input size (None when none was given).

A conv/pool with effective kernel K = d(k-1)+1, stride s and left padding p along an axis maps
``r -> r + (K-1) j``, ``j -> j s``, ``lo -> lo - p j``, ``hi -> hi + (K-1-p) j`` and
``size -> floor((size + p_total - K) / s) + 1``. Merges (activations, BN, dropout, add/mul,
channel cat) take r_min = min, r_max = max, [lo, hi] = union over inputs, per axis; their
jumps must agree. Global pooling, Linear on flattened maps and token mixing (attention) make
every output depend on the whole input: r = inf on both axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from torch import fx

from landscape.receptive_field.phases import Phased, combine

INF = math.inf
AXES = ("h", "w")


class UnsupportedModelError(ValueError):
    """The model cannot be traced, or uses an op whose effect on the RF is unknown."""


class Skip(Exception):
    """Internal: the current node is unsupported; the message says why."""


@dataclass(frozen=True)
class Axis:
    """RF geometry along one spatial axis; ``r_min == inf`` means every path is global.

    ``parts``: for a map downstream of an upsampling, its classes of paths with per-phase
    geometry (:mod:`.phases`); then the other fields summarise them: ``jump`` is the mean jump,
    r_min / r_max the extremes over classes and the phases of its positions, [lo, hi]
    position 0's union."""

    jump: int | float | None  # a float only as the mean of a resized map's uneven spacing
    r_min: float
    r_max: float
    lo: int | None
    hi: int | None
    size: int | None
    parts: tuple[Phased, ...] = ()

    @property
    def is_local(self) -> bool:
        return self.r_min < INF

    def span(self, t: int) -> tuple[int, int]:
        """First and last input pixel any path reaches from position t (exact per phase)."""
        if not self.parts:
            return self.lo + t * self.jump, self.hi + t * self.jump
        ends = [(p.lo + a, p.hi + b) for p in self.parts for a, b in [p.at(t)]]
        return min(a for a, _ in ends), max(b for _, b in ends)

    def classes(self) -> list[Phased]:
        """The classes of local paths (one plain class for an axis without ``parts``)."""
        if self.parts:
            return list(self.parts)
        return [Phased.plain(self.jump, self.r_min, self.r_max, self.lo, self.hi)]


def from_classes(parts: list[Phased], size: int | None, where: str) -> Axis:
    """The axis of these classes of local paths: a plain one when a single class of period 1
    remains (a stride that is a multiple of the period evens the positions out again)."""
    parts = list(combine(parts))
    if len(parts) == 1 and parts[0].period == 1:
        p = parts[0]
        return Axis(jump=p.shift, r_min=p.r_min, r_max=p.r_max, lo=p.lo, hi=p.hi, size=size)
    jumps = sorted({p.jump for p in parts})
    if len(jumps) > 1:
        raise Skip(f"{where} merges feature maps with different mean jumps {jumps}: their "
                   "positions are not aligned, so the RF of the result is undefined")
    if jumps[0] < 1:
        raise Skip(f"{where} upsamples beyond the input's resolution (a mean jump of "
                   f"{jumps[0]:g} pixels), which the RF analysis does not follow")
    jump = int(jumps[0]) if float(jumps[0]).is_integer() else jumps[0]
    sizes = [p.sizes(size) for p in parts]  # over the positions the map has
    return Axis(jump=jump, r_min=min(a for a, _ in sizes),
                r_max=max(b for _, b in sizes), lo=min(p.lo for p in parts),
                hi=max(p.hi for p in parts), size=size, parts=tuple(parts))


def resampled(a: Axis, n_out: int, n_in: int, taps: Any, size: int | None, name: str,
              where: str) -> Axis:
    """Axis ``name`` after a resampling that reads ``taps(t)`` (every ``n_out`` outputs
    advance ``n_in`` source positions; :meth:`Phased.resample`)."""
    try:
        classes = [c.resample(n_out, n_in, taps) for c in a.classes()]
    except ValueError as e:
        raise Skip(f"{where} resamples {name.upper()} by {n_out}/{n_in}: {e}, which the RF "
                   "analysis does not follow") from None
    return from_classes(classes, size, where)


GLOBAL_AXIS = Axis(jump=None, r_min=INF, r_max=INF, lo=None, hi=None, size=None)


@dataclass(frozen=True)
class Geometry:
    """RF geometry of one tensor: one :class:`Axis` per image axis and, for a feature map,
    its layout (:mod:`.layout`: where H and W lie among the tensor's dimensions)."""

    h: Axis
    w: Axis
    layout: Any = None  # layout.Layout; None for global tensors

    @property
    def is_local(self) -> bool:
        return self.h.is_local and self.w.is_local

    @property
    def r_min(self) -> float:
        """Smallest RF over paths and axes."""
        return min(self.h.r_min, self.w.r_min)

    @property
    def r_max(self) -> float:
        """Largest RF over paths and axes."""
        return max(self.h.r_max, self.w.r_max)

    def axis(self, name: str) -> Axis:
        return self.h if name == "h" else self.w


GLOBAL = Geometry(GLOBAL_AXIS, GLOBAL_AXIS, None)


def image(size: tuple[int, int] | None, layout: Any) -> Geometry:
    """The input image: every position sees one pixel."""
    h, w = size if size is not None else (None, None)
    return Geometry(Axis(1, 1, 1, 0, 0, h), Axis(1, 1, 1, 0, 0, w), layout)


@dataclass(frozen=True)
class Unsupported:
    reason: str


State = Geometry | Unsupported | None  # None: a constant or non-tensor value


@dataclass(frozen=True)
class LayerRecord:
    """One conv/pool/linear/attention op in forward order with its input and output state.
    Window settings are ``(h, w)`` pairs, None where the op has none."""

    name: str  # module path, or the node name for functional ops
    node: str
    kind: str
    kernel: tuple[int, int] | None
    stride: tuple[int, int] | None
    padding: tuple[int, int] | None  # left (= top) padding
    dilation: tuple[int, int] | None
    inp: State
    out: State


def arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def pair(value: Any, what: str, where: str) -> tuple[int, int]:
    """``(h, w)`` from an int or a 1- or 2-sequence."""
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            value = (value[0], value[0])
        if len(value) != 2:
            raise Skip(f"{where} has a {what} {tuple(value)} that is not 2-d")
    else:
        value = (value, value)
    if any(v is None or isinstance(v, fx.Node) for v in value):
        raise Skip(f"{where} has a {what} that is unset or computed at run time")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class Window:
    """A sliding window along the last two dimensions: ``(dim -2, dim -1)`` pairs."""

    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    pad_total: tuple[int | None, int | None] = (None, None)  # None: 2 * padding
    ceil_mode: bool = False

    @property
    def pointwise(self) -> bool:
        """Kernel 1, stride 1, no padding: every output position is its input position."""
        return self.kernel == self.stride == (1, 1) and self.padding == (0, 0) and \
            self.pad_total in ((None, None), (0, 0)) and not self.ceil_mode

    def apply_axis(self, a: Axis, i: int) -> Axis:
        if not a.is_local:
            return GLOBAL_AXIS
        k_eff = self.dilation[i] * (self.kernel[i] - 1) + 1
        j, p = a.jump, self.padding[i]
        size = None
        if a.size is not None:
            total = 2 * p if self.pad_total[i] is None else self.pad_total[i]
            size = pooled_size(a.size, k_eff, self.stride[i], total, p, self.ceil_mode)
        if a.parts:
            return from_classes([c.window(self.stride[i], p, k_eff - 1) for c in a.parts],
                                size, f"a {self.kind}")
        return Axis(jump=j * self.stride[i], r_min=a.r_min + (k_eff - 1) * j,
                    r_max=a.r_max + (k_eff - 1) * j, lo=a.lo - p * j,
                    hi=a.hi + (k_eff - 1 - p) * j, size=size)

    def apply(self, g: Geometry, axes: tuple[str, str] = AXES) -> Geometry:
        """Output geometry; ``axes``: the image axes held by dims -2 and -1 (a transposed
        map has ``("w", "h")``)."""
        if not g.is_local:
            return GLOBAL
        new = {axes[i]: self.apply_axis(g.axis(axes[i]), i) for i in range(2)}
        return Geometry(new["h"], new["w"], g.layout)

    def on_axes(self, axes: tuple[str, str]) -> dict[str, tuple[int, int, int, int]]:
        """``{axis: (kernel, stride, padding, dilation)}`` by image axis."""
        return {axes[i]: (self.kernel[i], self.stride[i], self.padding[i], self.dilation[i])
                for i in range(2)}

    def fields(self, axes: tuple[str, str]) -> dict[str, Any]:
        """The :class:`LayerRecord` fields of this window run on ``axes`` (the image axes in
        dims -2, -1): its kind, and (h, w) pairs of kernel, stride, padding and dilation."""
        on = self.on_axes(axes)
        return {"kind": self.kind, **{k: (on["h"][i], on["w"][i]) for i, k in
                                      enumerate(("kernel", "stride", "padding", "dilation"))}}


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


def shift(a: Axis, start: int, step: int, size: int | None) -> Axis:
    """Positions ``start, start + step, ...`` of an axis (slicing; ``start < 0``: padding)."""
    if a.parts:
        return from_classes([c.window(step, -start, 0) for c in a.parts], size, "a slice")
    return Axis(jump=a.jump * step, r_min=a.r_min, r_max=a.r_max, lo=a.lo + start * a.jump,
                hi=a.hi + start * a.jump, size=size)


def merge_axes(axes: list[Axis], name: str, where: str) -> Axis:
    local = [a for a in axes if a.is_local]
    if not local:
        return GLOBAL_AXIS
    if any(a.parts for a in local):
        classes = [c for a in local for c in a.classes()]
        if len(local) < len(axes):  # a global path joins: r_max = inf, kept by later windows
            classes[0] = replace(classes[0], r_max=INF)
        sizes = [a.size for a in local]
        return from_classes(classes, None if None in sizes else max(sizes), where)
    jumps = sorted({a.jump for a in local})
    if len(jumps) > 1:
        raise Skip(f"{where} merges feature maps with different jumps {jumps} along "
                   f"{name.upper()}: their positions are not aligned, so the RF of the result "
                   "is undefined")
    sizes = [a.size for a in local]
    return Axis(jump=jumps[0], r_min=min(a.r_min for a in axes),
                r_max=max(a.r_max for a in axes), lo=min(a.lo for a in local),
                hi=max(a.hi for a in local), size=None if None in sizes else max(sizes))


def merge(states: list[Geometry], where: str, layout: Any = None) -> Geometry:
    """Elementwise combination: per axis r_min = min, r_max = max, [lo, hi] = union."""
    if not any(g.is_local for g in states):
        return GLOBAL
    if layout is None:
        layout = next(g.layout for g in states if g.is_local)
    return Geometry(merge_axes([g.h for g in states], "h", where),
                    merge_axes([g.w for g in states], "w", where), layout)
