"""The effective receptive field (ERF) of a mean importance map.

Luo et al. (2016): the side of the smallest centred square that holds a given fraction of the
map's mass, and the number of pixels above a fraction of the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ERFSize:
    """ERF of a mean map: ``size`` (pixels) is the side of the smallest square centred on
    ``centre`` (row, col; the rounded mass centroid) holding ``mass_fraction`` of the mass
    (the square is clipped to the image, so it may exceed the image side); ``censored``:
    that square reaches past the image's edge, so the image cut the ERF (on an unbounded
    input it would be at least as large); ``area`` is the number of pixels >=
    ``rel_threshold`` times the map's maximum."""

    size: int
    mass_fraction: float
    area: int
    rel_threshold: float
    centre: tuple[int, int]
    censored: bool


def _map(mean_map: np.ndarray) -> np.ndarray:
    m = np.asarray(mean_map, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"mean_map must be 2-D (H, W), got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any() or m.sum() <= 0:
        raise ValueError("mean_map must be finite, non-negative and not all zero")
    return m


def mass_centre(mean_map: np.ndarray) -> tuple[int, int]:
    """Mass centroid (row, col) of the map, rounded half up to a pixel."""
    m = _map(mean_map)
    rows, cols = np.indices(m.shape)
    total = m.sum()
    return int(np.floor((rows * m).sum() / total + 0.5)), int(np.floor((cols * m).sum() / total + 0.5))


def erf_size(mean_map: np.ndarray, *, mass_fraction: float = 0.95,
             centre: tuple[int, int] | None = None) -> int:
    """Side 2r + 1 of the smallest square centred on ``centre`` (default: :func:`mass_centre`)
    whose part inside the image holds at least ``mass_fraction`` of the total mass."""
    return erf_square(mean_map, mass_fraction=mass_fraction, centre=centre)[0]


def erf_square(mean_map: np.ndarray, *, mass_fraction: float = 0.95,
               centre: tuple[int, int] | None = None) -> tuple[int, bool]:
    """(:func:`erf_size`, censored): censored when that square reaches past the image's edge
    on some side, so the image cut the ERF (its size is bounded by the image, not by the
    network)."""
    m = _map(mean_map)
    if not 0 < mass_fraction <= 1:
        raise ValueError(f"mass_fraction must be in (0, 1], got {mass_fraction!r}")
    r0, c0 = mass_centre(m) if centre is None else centre
    if not (0 <= r0 < m.shape[0] and 0 <= c0 < m.shape[1]):
        raise ValueError(f"centre must lie inside the {m.shape} map, got {(r0, c0)}")
    target = mass_fraction * m.sum() * (1 - 1e-12)
    r = 0  # terminates: at r = max(H, W) the square holds the whole map
    while m[max(r0 - r, 0): r0 + r + 1, max(c0 - r, 0): c0 + r + 1].sum() < target:
        r += 1
    h, w = m.shape
    return 2 * r + 1, bool(r0 - r < 0 or c0 - r < 0 or r0 + r >= h or c0 + r >= w)


def erf_area(mean_map: np.ndarray, *, rel_threshold: float = 0.1) -> int:
    """Number of pixels whose value is at least ``rel_threshold`` times the map's maximum."""
    m = _map(mean_map)
    if not 0 < rel_threshold <= 1:
        raise ValueError(f"rel_threshold must be in (0, 1], got {rel_threshold!r}")
    return int((m >= rel_threshold * m.max()).sum())


def erf_stats(mean_map: np.ndarray, *, mass_fraction: float = 0.95,
              rel_threshold: float = 0.1) -> ERFSize:
    """Both ERF measures of ``mean_map`` with their thresholds."""
    size, censored = erf_square(mean_map, mass_fraction=mass_fraction)
    return ERFSize(
        size=size, mass_fraction=mass_fraction,
        area=erf_area(mean_map, rel_threshold=rel_threshold), rel_threshold=rel_threshold,
        centre=mass_centre(mean_map), censored=censored,
    )
