"""Receptive fields through upsampling: maps whose positions are not evenly spaced in the input.

After a conv or pool every position of a map covers the input window of position 0 shifted by
``u * jump``. Upsampling by an integer factor k breaks that: nearest-neighbour upsampling
repeats each position k times, and a 3x3 conv after it sees two source positions at every
output position, while a 2x2 conv sees one or two depending on the phase. So an axis of an
upsampled map is described *per phase* (Araujo et al.'s closed forms are the one-phase case):

A :class:`Phased` class of paths has a period ``P`` (positions) and a shift ``D`` (input
pixels per period). Position ``t = P*q + f`` covers, over the class's paths, the pixels
``[lo + dlo[f] + D*q, hi + dhi[f] + D*q]`` (``dlo[0] = dhi[0] = 0``), and a path of the class
whose position 0 has RF size r has RF size ``r + dhi[f] - dlo[f]`` at phase f. ``r_min`` /
``r_max`` are the smallest / largest such r at position 0 over the class's paths. A plain axis
is the class with ``P = 1``: then ``D`` is Araujo's jump.

* A window (conv / pool: stride s, left padding p, extent E = dilation * (kernel - 1)) maps
  output position v to positions ``s*v - p .. s*v - p + E``; per class the output period is
  ``P / gcd(s, P)``, so a stride that is a multiple of the period makes the class plain again.
* Upsampling by k maps position t to the source positions it reads, ``taps(t)``, with
  ``taps(t + k) = taps(t) + 1``: the period grows k-fold.
* Paths of one structure (``P``, ``D``, ``dlo``, ``dhi``) are one class; an elementwise merge
  of maps keeps each class (an HRNet fusion adds upsampled low-resolution paths to the
  high-resolution ones: two classes), and the tensor's r_min / r_max are the extremes over
  classes and phases. Borders are ignored, as for convs (positions beyond the image read the
  padding): the sizes are those of interior positions.

Nothing here is an approximation: r_min / r_max are tested against the input gradients of every
interior output position (tests/test_rf_upsampling.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

Taps = Callable[[int], tuple[int, int]]


@dataclass(frozen=True)
class Phased:
    """One class of paths along one axis (module doc)."""

    period: int
    shift: int
    dlo: tuple[int, ...]
    dhi: tuple[int, ...]
    r_min: float
    r_max: float
    lo: int
    hi: int

    @classmethod
    def plain(cls, jump: int, r_min: float, r_max: float, lo: int, hi: int) -> Phased:
        return cls(1, jump, (0,), (0,), r_min, r_max, lo, hi)

    @property
    def structure(self) -> tuple:
        return self.period, self.shift, self.dlo, self.dhi

    @property
    def jump(self) -> float:
        """Mean input pixels between neighbouring positions."""
        return self.shift / self.period

    def sizes(self) -> tuple[float, float]:
        """Smallest and largest RF size over the class's paths and phases."""
        grow = [h - lo for lo, h in zip(self.dlo, self.dhi)]
        return self.r_min + min(grow), self.r_max + max(grow)

    def _at(self, t: int) -> tuple[int, int]:
        """(first, last) pixel offsets covered by position t, from those of position 0."""
        q, f = divmod(t, self.period)
        return self.dlo[f] + self.shift * q, self.dhi[f] + self.shift * q

    def _rebuilt(self, period: int, shift: int, spans: list[tuple[int, int]]) -> Phased:
        """A class with the given per-phase (first, last) offsets, re-based on phase 0."""
        lo0, hi0 = spans[0]
        grow0 = hi0 - lo0
        out = Phased(period, shift, tuple(a - lo0 for a, _ in spans),
                     tuple(b - hi0 for _, b in spans), self.r_min + grow0, self.r_max + grow0,
                     self.lo + lo0, self.hi + hi0)
        return out.reduced()

    def _span(self, first: int, last: int) -> tuple[int, int]:
        """Union of the offsets covered by positions ``first..last`` (not monotone in the
        position after a bicubic upsampling: its taps jump back at integer coordinates)."""
        ends = [self._at(t) for t in range(first, last + 1)]
        return min(a for a, _ in ends), max(b for _, b in ends)

    def window(self, stride: int, padding: int, extent: int) -> Phased:
        g = math.gcd(stride, self.period)
        period, shift = self.period // g, self.shift * stride // g
        spans = [self._span(stride * v - padding, stride * v - padding + extent)
                 for v in range(period)]
        return self._rebuilt(period, shift, spans)

    def upsample(self, factor: int, taps: Taps) -> Phased:
        return self._rebuilt(self.period * factor, self.shift,
                             [self._span(*taps(t)) for t in range(self.period * factor)])

    def reduced(self) -> Phased:
        """The same class with its shortest period."""
        for d in range(1, self.period):
            if self.period % d or (self.shift * d) % self.period:
                continue
            step = self.shift * d // self.period
            if all(self.dlo[f + d] == self.dlo[f] + step and self.dhi[f + d] == self.dhi[f] + step
                   for f in range(self.period - d)):
                return Phased(d, step, self.dlo[:d], self.dhi[:d], self.r_min, self.r_max,
                              self.lo, self.hi)
        return self


def combine(parts: list[Phased]) -> tuple[Phased, ...]:
    """Classes of one structure merged (r_min = min, r_max = max, [lo, hi] = union), in a
    stable order."""
    out: dict[tuple, Phased] = {}
    for p in parts:
        q = out.get(p.structure)
        out[p.structure] = p if q is None else Phased(
            *p.structure, min(p.r_min, q.r_min), max(p.r_max, q.r_max), min(p.lo, q.lo),
            max(p.hi, q.hi))
    return tuple(sorted(out.values(), key=lambda p: (p.period, p.shift, p.dlo, p.dhi)))


def upsample_taps(mode: str, factor: int, align_corners: bool | None) -> Taps | None:
    """``taps(t)``: the first and last source position that output position t of torch's
    ``interpolate(mode, scale_factor=factor)`` reads with a non-zero weight; None for a mode
    whose taps are not periodic (``align_corners=True``) or unknown."""
    k = factor
    if mode == "nearest":
        return lambda t: (t // k, t // k)
    if mode == "nearest-exact":
        return lambda t: ((2 * t + 1) // (2 * k),) * 2
    if align_corners:
        return None
    if mode in ("bilinear", "linear"):
        # source coordinate (t + 0.5) / k - 0.5 = n / 2k: taps floor and floor + 1 (weight 0
        # on the second when the coordinate is an integer)
        def linear(t: int) -> tuple[int, int]:
            n = 2 * t + 1 - k
            first = n // (2 * k)
            return first, first + (1 if n % (2 * k) else 0)
        return linear
    if mode == "bicubic":  # four taps; one at an integer coordinate (the others weigh 0)
        def cubic(t: int) -> tuple[int, int]:
            n = 2 * t + 1 - k
            first = n // (2 * k)
            return (first - 1, first + 2) if n % (2 * k) else (first, first)
        return cubic
    return None
