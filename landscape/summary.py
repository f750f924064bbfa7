"""A quick console summary of finished runs (the full tables live in analysis/)."""

from __future__ import annotations

import pandas as pd


def final_accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch test accuracy per cell: mean, std and n over seeds."""
    acc = df[(df["stage"] == "train") & (df["metric"] == "test_acc")]
    if acc.empty:
        return pd.DataFrame()
    last = acc.loc[acc.groupby("run_id")["index"].idxmax()]
    keys = ["arch", "dataset", "pool_level", "receptive_field"]
    out = last.groupby(keys)["value"].agg(["mean", "std", "count"])
    return out.rename(columns={"mean": "test_acc_mean", "std": "test_acc_std", "count": "seeds"})
