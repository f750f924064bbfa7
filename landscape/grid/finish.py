"""The end of a grid: cell-level stages, a console summary and the report (shared by the local
backend, the Slurm cell job, the ``-m`` multirun callback and ``landscape-cells``)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from landscape import results
from landscape.config import RunConfig
from landscape.grid.variants import merge_summaries
from landscape.identity import identify
from landscape.pipeline import CellSummary, run_cell

log = logging.getLogger("landscape")


def final_accuracy_table(df: pd.DataFrame, variants: Optional[dict[str, str]] = None
                         ) -> pd.DataFrame:
    """Final-epoch test accuracy per cell: mean, std and n over seeds. Cells that differ in
    more than the RF pool (``variants``, see ``results.cell_variants``) are separate rows,
    labelled by how they differ; so are cells of other input sizes or protocols (their
    ``image_size`` / ``resize`` columns)."""
    acc = df[(df["stage"] == "train") & (df["metric"] == "test_acc")]
    if acc.empty:
        return pd.DataFrame()
    last = acc.loc[acc.groupby("run_id")["index"].idxmax()]
    cell = last["run_id"].str.split("/seed=").str[0]
    last = last.assign(cell=cell, variant=cell.map(variants or {}).astype(object).fillna(""))
    for col, old in (("image_size", pd.NA), ("resize", "direct")):  # rows of older versions
        last[col] = last[col].fillna(old) if col in last.columns else old
    keys = ["arch", "dataset", "width", "pool_level", "pool_kernel", "pool_stride",
            "receptive_field", "image_size", "resize", "variant"]
    out = last.groupby(keys, dropna=False)["value"].agg(["mean", "std", "count"])
    return out.rename(columns={"mean": "test_acc_mean", "std": "test_acc_std", "count": "seeds"})


def cell_variants(root: str | Path) -> dict[str, str]:
    """:func:`landscape.results.cell_variants`, a field at its default left out of a label."""
    return results.cell_variants(root, defaults=dataclasses.asdict(RunConfig()))


def write_root_report(root: str | Path, out: Optional[str | Path] = None, *,
                      title: Optional[str] = None,
                      reference: Optional[pd.DataFrame] = None) -> Path:
    """The report (``analysis.report``) of every finished unit under ``root``, with the failed
    units, the stage order of the registry and (by default) the paper's published tables
    beside ours; returns the path of ``report.md``."""
    from analysis.reference import paper_tables
    from analysis.report import DEFAULT_TITLE, write_report
    from landscape.stages import stage_names
    from landscape.stages.importance import censoring_rows

    root = Path(root)
    df = results.load(root)
    arrays = {st: results.load_arrays(root, st) for st in df["stage"].dropna().unique()
              if str(st).startswith("importance_")}
    older = censoring_rows(df, arrays)  # units written before erf_size_censored existed
    if older:
        df = pd.concat([df, results.to_frame(older)], ignore_index=True)
    return write_report(df, Path(out) if out else root / "report", arrays=arrays,
                        title=title or DEFAULT_TITLE, results_root=root,
                        failures=results.failures(root),
                        reference=paper_tables() if reference is None else reference,
                        stage_order=stage_names(), variants=cell_variants(root),
                        empty=results.empty_units(root))


def finish_cells(root: str | Path, cells: Optional[Sequence[RunConfig]] = None, *,
                 overrides: Optional[RunConfig] = None) -> list[CellSummary]:
    """Run the cell-level stages of ``cells`` (default: every cell under ``root``) with the
    analysis settings of ``overrides`` (default: those of each of ``cells``, one after
    another where a cell has several: the variants of a grid, ``landscape.grid.plan``; else
    each cell's stored settings), print where the results are and a summary, and write
    ``root/report`` when ``report`` is set. Every cell is tried; then a RuntimeError names the
    cells whose cell-level stages failed (tracebacks are logged)."""
    root = Path(root).resolve()
    settings: dict[str, list[Optional[RunConfig]]] = {}
    if cells is None or overrides is not None:
        for name in (results.cell_names(root) if cells is None
                     else [identify(c).cell_name for c in cells]):
            settings[name] = [overrides]
    else:
        for c in cells:
            settings.setdefault(identify(c).cell_name, []).append(c)
    names = list(settings)
    done, failed = [], []
    for name in names:
        try:
            summaries = [run_cell(root, name, overrides=cfg) for cfg in settings[name]]
        except Exception:  # noqa: BLE001 - the other cells still run; reported below
            log.exception("%s: cell-level stages failed", name)
            failed.append(name)
            continue
        s = merge_summaries(summaries)  # the variants' units in one summary
        done.append(s)
        if s.ran:
            print(f"[landscape] {name}: {', '.join(s.ran)} over seeds {s.seeds}")
    df = results.load(root)
    df = df[df["run_id"].str.split("/").str[0].isin(set(names))]
    runs = df.loc[df["run_id"].str.contains("/seed="), "run_id"].nunique()
    print(f"\n[landscape] results under {root} ({runs} runs in {len(names)} cells, "
          f"{len(df)} rows)")
    if len(df):
        print(final_accuracy_table(df, cell_variants(root)).to_string())
    print(f"[landscape] load them with: landscape.results.load({str(root)!r})", flush=True)
    report = (overrides.report if overrides is not None
              else cells is None or not cells or any(c.report for c in cells))
    if len(df) and report:
        path = write_root_report(root)
        print(f"[landscape] report: {path} and {path.with_suffix('.html')}")
    if failed:
        raise RuntimeError(f"cell-level stages failed for {failed} (tracebacks above)")
    return done
