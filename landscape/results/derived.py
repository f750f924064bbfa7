"""Identity columns the RF analysis computes, made consistent within each cell at load.

Every row carries its cell's ``receptive_field`` and ``global_mixing`` as the analysis of its
day computed them (:mod:`landscape.identity`); a unit added after the analysis changed
would split its cell in every table grouped by them. :func:`align_derived` (called by
``load``) gives such a cell's rows the values of its receptive-field stage, which is
recomputed whenever the analysis changes.
"""

from __future__ import annotations

import warnings

import pandas as pd

# Identity columns the RF analysis computes (landscape.identity), not the config: a unit keeps
# the values of the analysis that wrote it.
DERIVED_COLUMNS = ["receptive_field", "global_mixing"]
RF_STAGE = "receptive_field"


class DerivedColumnsWarning(UserWarning):
    """Rows of one cell written by different versions of the RF analysis disagreed."""


def align_derived(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with :data:`DERIVED_COLUMNS` equal within each cell. The rows of a cell whose
    units were written by different versions of the RF analysis disagree there (the cell
    would split into two in every table grouped by them); its receptive-field stage is
    recomputed whenever the analysis changes, so its rows hold the current values: every row
    of the cell gets them, with one warning naming the cells. A cell without those rows keeps
    its values, and the warning says so."""
    seen = df[["run_id", *DERIVED_COLUMNS]].drop_duplicates()  # a few rows per run
    counts = seen[DERIVED_COLUMNS].groupby(_cell(seen["run_id"]).to_numpy()).nunique(
        dropna=False)
    mixed = counts.index[(counts > 1).any(axis=1)].tolist()
    if not mixed:
        return df
    df, cell = df.copy(), _cell(df["run_id"])
    fixed, kept = [], []
    for name in mixed:
        rows = (cell == name).to_numpy()
        current = df.loc[rows & (df["stage"] == RF_STAGE).to_numpy(), DERIVED_COLUMNS]
        if current.empty:
            kept.append(name)
            continue
        for col in DERIVED_COLUMNS:
            df.loc[rows, col] = current[col].iloc[0]
        fixed.append(name)
    message = (f"rows of {len(mixed)} cell(s) were written by different versions of the RF "
               f"analysis and disagree on {DERIVED_COLUMNS}")
    if fixed:
        message += f"; set from each cell's current {RF_STAGE} rows: {fixed}"
    if kept:
        message += (f"; left as written (no {RF_STAGE} rows; run the cell again to write them)"
                    f": {kept}")
    warnings.warn(message, DerivedColumnsWarning, stacklevel=3)
    return df


def _cell(run_id: pd.Series) -> pd.Series:
    """``"<cell>/seed=<s>"`` or ``"<cell>"`` -> ``"<cell>"``."""
    return run_id.astype("string").str.split("/seed=", n=1).str[0]
