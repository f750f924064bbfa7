"""The end of a grid: cell-level stages, a console summary, the report (shared by the local
multirun callback and the Slurm cell job)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import pandas as pd

log = logging.getLogger("landscape")


def final_accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch test accuracy per cell: mean, std and n over seeds."""
    acc = df[(df["stage"] == "train") & (df["metric"] == "test_acc")]
    if acc.empty:
        return pd.DataFrame()
    last = acc.loc[acc.groupby("run_id")["index"].idxmax()]
    keys = ["arch", "dataset", "pool_level", "receptive_field"]
    out = last.groupby(keys)["value"].agg(["mean", "std", "count"])
    return out.rename(columns={"mean": "test_acc_mean", "std": "test_acc_std", "count": "seeds"})


def finish_grid(root: Path, overrides, cell_dirs: Optional[list[Path]] = None
                ) -> tuple[list, list[str]]:
    """Run the cell-level stages of ``cell_dirs`` (default: every cell under ``root``) with the
    analysis settings of ``overrides`` (a RunConfig), print where the results are and a
    summary, and write ``root/report`` if ``overrides.report``. Returns the CellSummary of
    every cell that ran and the names of the cells whose cell-level stages failed (the others
    still ran)."""
    from landscape import results
    from landscape.pipeline import run_cell

    root = Path(root).resolve()
    if cell_dirs is None:
        cell_dirs = [c.parent for c in sorted(root.glob("*/cell.json"))]
    done, failed = [], []
    for cell in cell_dirs:
        try:
            s = run_cell(cell, overrides=overrides)
        except Exception:  # noqa: BLE001 - the other cells still run; reported to the caller
            log.exception("%s: cell-level stages failed", Path(cell).name)
            failed.append(Path(cell).name)
            continue
        done.append(s)
        if s.ran:
            print(f"[landscape] {Path(cell).name}: {', '.join(s.ran)} over seeds {s.seeds}")
    df = results.load(root)
    names = {Path(c).name for c in cell_dirs}
    df = df[df["run_id"].str.split("/").str[0].isin(names)]
    runs = df.loc[df["run_id"].str.contains("/seed="), "run_id"].nunique()
    print(f"\n[landscape] results under {root} ({runs} runs in {len(names)} cells, "
          f"{len(df)} rows)")
    if len(df):
        print(final_accuracy_table(df).to_string())
    print(f"[landscape] load them with: landscape.results.load({str(root)!r})", flush=True)
    if len(df) and overrides.report:
        from analysis.report import report_main

        report_main([str(root)])  # prints where the report is
    return done, failed
