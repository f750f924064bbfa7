"""Luo et al.'s depth laws from the ERF sweep's rows (``landscape.importance.luo``): the
log-log slope of an ERF measure against depth, per setting, with its confidence interval.

For a stack of n layers the ERF sigma grows as n^b; b = 1/2 for linear stacks (the variance
of an n-fold convolution is linear in n), while the analytic RF grows as n, so
ERF / RF ~ n^(b - 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

SLOPE_COLUMNS = ("setting", "measure", "n_depths", "slope", "ci_low", "ci_high", "intercept",
                 "r2")


def depth_slopes(rows: pd.DataFrame, measure: str = "sigma", *,
                 confidence: float = 0.95) -> pd.DataFrame:
    """Per setting, the least-squares fit log(measure) = intercept + slope * log(depth)
    (``scipy.stats.linregress``, natural logs) with the two-sided ``confidence`` interval of
    the slope (Student t, n - 2 degrees of freedom; NaN with fewer than 3 depths)."""
    if measure not in rows.columns:
        raise ValueError(f"measure {measure!r} is not a column; columns: {', '.join(rows.columns)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    out = []
    for setting, g in rows.groupby("setting", sort=False):
        g = g.sort_values("depth")
        if (g[measure] <= 0).any() or (g["depth"] <= 0).any():
            raise ValueError(f"setting {setting!r}: {measure} and depth must be > 0 for a "
                             "log-log fit")
        n = len(g)
        if n < 2:
            slope = intercept = r2 = lo = hi = float("nan")
        else:
            fit = stats.linregress(np.log(g["depth"]), np.log(g[measure]))
            slope, intercept, r2 = float(fit.slope), float(fit.intercept), float(fit.rvalue ** 2)
            half = (stats.t.ppf((1 + confidence) / 2, n - 2) * fit.stderr if n > 2
                    else float("nan"))
            lo, hi = slope - half, slope + half
        out.append({"setting": setting, "measure": measure, "n_depths": n, "slope": slope,
                    "ci_low": lo, "ci_high": hi, "intercept": intercept, "r2": r2})
    return pd.DataFrame(out, columns=list(SLOPE_COLUMNS))
