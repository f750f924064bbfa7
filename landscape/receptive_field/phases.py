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
* A resize maps output position t to the source positions it reads, ``taps(t)``; with
  ``b / a`` source positions per output position (upsampling by k: 1 / k; any rational
  ratio, e.g. MobileViT's 7 -> 8 px), ``taps(t + a) = taps(t) + b``: a class of period P
  gives one of period ``a P / gcd(b, P)`` (upsampling by k: k-fold).
* Paths of one structure (``P``, ``D``, ``dlo``, ``dhi``) are one class; an elementwise merge
  of maps keeps each class (an HRNet fusion adds upsampled low-resolution paths to the
  high-resolution ones: two classes), and the tensor's r_min / r_max are the extremes over
  classes and over the phases of the positions the map has (a map of one position upsampled
  to 7 and read by a 7-wide conv has one output, of phase 0; the other phases of the periodic
  structure do not occur). Borders are ignored, as for convs (positions beyond the image read
  the padding): the sizes are those of interior positions.

Nothing here is an approximation: r_min / r_max are tested against the input gradients of every
interior output position (tests/test_rf_upsampling.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

Taps = Callable[[int], tuple[int, int]]
MAX_PERIOD = 1 << 14  # phases per class: a chain of resizes by coprime ratios is refused past it


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

    def sizes(self, positions: int | None = None) -> tuple[float, float]:
        """Smallest and largest RF size over the class's paths and phases; over the phases of
        the first ``positions`` positions only when given (a map shorter than the period,
        e.g. one position upsampled to 7 and read by a 7-wide conv, has only phase 0)."""
        phases = self.period if positions is None else max(1, min(self.period, positions))
        grow = [h - lo for lo, h in zip(self.dlo[:phases], self.dhi[:phases])]
        return self.r_min + min(grow), self.r_max + max(grow)

    def at(self, t: int) -> tuple[int, int]:
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
        ends = [self.at(t) for t in range(first, last + 1)]
        return min(a for a, _ in ends), max(b for _, b in ends)

    def window(self, stride: int, padding: int, extent: int) -> Phased:
        g = math.gcd(stride, self.period)
        period, shift = self.period // g, self.shift * stride // g
        spans = [self._span(stride * v - padding, stride * v - padding + extent)
                 for v in range(period)]
        return self._rebuilt(period, shift, spans)

    def resample(self, n_out: int, n_in: int, taps: Taps) -> Phased:
        """Output position t reads this class's positions ``taps(t)`` (first, last), with
        ``taps(t + n_out) = taps(t) + n_in``: every ``n_out`` outputs advance ``n_in`` source
        positions (nearest upsampling by k: n_out = k, n_in = 1). The output repeats after
        ``n_out * k`` positions, k the fewest periods of this class in ``k * n_in``."""
        k = self.period // math.gcd(n_in, self.period)
        period, shift = n_out * k, self.shift * n_in * k // self.period
        if period > MAX_PERIOD:
            raise ValueError(f"the positions repeat only every {period} positions (more than "
                             f"{MAX_PERIOD})")
        return self._rebuilt(period, shift, [self._span(*taps(t)) for t in range(period)])

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


def resize_taps(mode: str, ratio: Fraction, aligned: bool = False) -> Taps | None:
    """``taps(t)``: the first and last source position that output position t of torch's
    ``interpolate(mode)`` reads with a non-zero weight, ``ratio`` source positions per output
    position (1 / k for an upsampling by k), in exact arithmetic and without the clamping at
    the map's borders (as a conv's padding, the borders are ignored); periodic:
    ``taps(t + a) = taps(t) + b`` for ``ratio = b / a``. ``aligned`` (``align_corners=True``,
    the (bi)linear and bicubic modes only): the corners' centres map onto each other, source
    coordinate ``t r`` with ``r = (n_in - 1) / (n_out - 1)``; else torch's half-pixel rule,
    ``(t + 1/2) r - 1/2``. None for a mode whose taps are unknown."""
    r = Fraction(ratio)
    half = Fraction(1, 2)
    # nearest reads floor(t r), nearest-exact floor((t + 1/2) r)
    if mode == "nearest" and not aligned:
        return lambda t: (math.floor(t * r),) * 2
    if mode == "nearest-exact" and not aligned:
        return lambda t: (math.floor((t + half) * r),) * 2
    if mode not in ("bilinear", "linear", "bicubic"):
        return None
    reach = 1 if mode == "bicubic" else 0  # bicubic: taps floor - 1 .. floor + 2
    offset = Fraction(0) if aligned else half

    def taps(t: int) -> tuple[int, int]:
        src = (t + offset) * r - offset
        first = math.floor(src)
        if src == first:  # an integer coordinate: every other tap weighs 0
            return first, first
        return first - reach, first + 1 + reach
    return taps
