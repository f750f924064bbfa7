"""The paper's published tables, shipped as reference data (see README.md here)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER_TABLES = Path(__file__).resolve().parent / "paper_tables.csv"


def paper_tables() -> pd.DataFrame:
    """The paper's Tables 1-4 in long format: table, arch, dataset, receptive_field (the
    paper's label), pool_level, metric, mean, std, note."""
    return pd.read_csv(PAPER_TABLES)
