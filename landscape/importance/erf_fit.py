"""The shape of an effective receptive field (Luo et al. 2016): moments, a Gaussian fit, and
RepLKNet's high-contribution area ratio (Ding et al. 2022).

For a non-negative map m(y, x), normalised to unit mass p = m / sum(m):

* centre: (E[y], E[x]) under p, in (float) pixels;
* sigma_y, sigma_x: sqrt(E[(y - E[y])^2]) and sqrt(E[(x - E[x])^2]) in pixels (second central
  moments; n uniform k x k linear convolutions give sigma^2 = n (k^2 - 1) / 12 exactly);
* the least-squares fit of A exp(-(y - y0)^2 / (2 s_y^2) - (x - x0)^2 / (2 s_x^2)) to m, with
  R^2 = 1 - SS_res / SS_tot against m.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

from landscape.importance.erf import erf_size

RATIO_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


@dataclass(frozen=True)
class ERFFit:
    """Moments and Gaussian fit of one ERF map (pixels; module docstring).

    ``sigma_y, sigma_x``, ``centre``: from the moments; ``amplitude``, ``fit_centre``,
    ``fit_sigma_y``, ``fit_sigma_x``: the least-squares Gaussian; ``r2``: its R^2 against the
    map (1 for a map that is exactly such a Gaussian, NaN for a constant map)."""

    sigma_y: float
    sigma_x: float
    centre: tuple[float, float]
    amplitude: float
    fit_centre: tuple[float, float]
    fit_sigma_y: float
    fit_sigma_x: float
    r2: float

    @property
    def sigma(self) -> float:
        """Mean of the two axes' moment sigmas (pixels)."""
        return (self.sigma_y + self.sigma_x) / 2


def check_map(mean_map: np.ndarray) -> np.ndarray:
    """``mean_map`` as float64 (H, W); ValueError saying what is wrong with it otherwise."""
    m = np.asarray(mean_map, dtype=np.float64)
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"the ERF map must be a non-empty 2-D (H, W) array, got shape {m.shape}")
    bad = int((~np.isfinite(m)).sum())
    if bad:
        raise ValueError(f"the ERF map has {bad} non-finite value(s) (NaN or inf) of {m.size}")
    if (m < 0).any():
        raise ValueError(f"the ERF map must be non-negative (|gradient|), its minimum is "
                         f"{m.min():g}")
    if m.sum() <= 0:
        raise ValueError("the ERF map is all zero: no gradient reached the input")
    return m


def _gaussian(coords: tuple[np.ndarray, np.ndarray], a: float, y0: float, x0: float,
              sy: float, sx: float) -> np.ndarray:
    y, x = coords
    return a * np.exp(-((y - y0) ** 2) / (2 * sy ** 2) - ((x - x0) ** 2) / (2 * sx ** 2))


def erf_fit(mean_map: np.ndarray) -> ERFFit:
    """Moments and the least-squares axis-aligned 2-D Gaussian of ``mean_map`` (module doc).

    The fit starts from the moments (sigma at least 0.5 pixel) and keeps each sigma in
    [1e-3, 4 * side] pixels, the centre inside the map."""
    m = check_map(mean_map)
    h, w = m.shape
    p = m / m.sum()
    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    py, px = p.sum(axis=1), p.sum(axis=0)
    cy, cx = float(ys @ py), float(xs @ px)
    sy, sx = float(np.sqrt(((ys - cy) ** 2) @ py)), float(np.sqrt(((xs - cx) ** 2) @ px))

    scale = m.max()
    y, x = np.meshgrid(ys, xs, indexing="ij")
    coords = (y.ravel(), x.ravel())
    target = (m / scale).ravel()
    start = [1.0, cy, cx, max(sy, 0.5), max(sx, 0.5)]
    lower = [0.0, 0.0, 0.0, 1e-3, 1e-3]
    upper = [np.inf, h - 1.0, w - 1.0, 4.0 * max(h, w), 4.0 * max(h, w)]
    start = list(np.clip(start, lower, upper))
    params, _ = curve_fit(_gaussian, coords, target, p0=start, bounds=(lower, upper),
                          max_nfev=2000)
    resid = target - _gaussian(coords, *params)
    ss_tot = float(((target - target.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    a, y0, x0, fy, fx = (float(v) for v in params)
    return ERFFit(sigma_y=sy, sigma_x=sx, centre=(cy, cx), amplitude=a * float(scale),
                  fit_centre=(y0, x0), fit_sigma_y=fy, fit_sigma_x=fx, r2=r2)


def high_contribution_ratio(mean_map: np.ndarray,
                            thresholds: tuple[float, ...] = RATIO_THRESHOLDS) -> dict[float, float]:
    """RepLKNet's high-contribution area ratio: for each t in ``thresholds``, the area of the
    smallest square centred on the input centre (H // 2, W // 2) whose part inside the map
    holds at least t of the total contribution, as a fraction of the map's area H * W.

    Computed on the map as given (RepLKNet's script first rescales it to log10(1 + m) / max;
    docs/erf.md)."""
    m = check_map(mean_map)
    h, w = m.shape
    r0, c0 = h // 2, w // 2
    out = {}
    for t in thresholds:
        if not 0 < t <= 1:
            raise ValueError(f"thresholds must lie in (0, 1], got {t!r}")
        r = erf_size(m, mass_fraction=t, centre=(r0, c0)) // 2
        rows = min(r0 + r + 1, h) - max(r0 - r, 0)
        cols = min(c0 + r + 1, w) - max(c0 - r, 0)
        out[t] = rows * cols / (h * w)
    return out
