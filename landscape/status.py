"""Where a grid stands, per run and stage unit, from the results folders and the Slurm queue.

States of a (run, unit), first match wins:

- ``done``: the unit's DONE marker exists (reason "diverged" for a diverged training);
- ``failed``: a FAILED file exists; the reason is its last line (the exception);
- ``skipped``: training diverged, so this later unit will never run;
- ``running`` / ``queued``: a live Slurm job of a recorded submission holds the run and is
  running / waiting (pending, requeued, held); all undone units of a running run show running;
- ``started``: partial output (the stage folder, or training checkpoints) but no live job: the
  run is running locally, or it was killed; resubmitting resumes it;
- ``missing``: nothing yet.

Cell-level units (``cka_<checkpoint>``) are one row per cell; the reason lists the seeds they
cover. The launcher appends to ``<root>/.submitit/submissions.jsonl`` which array task holds
which run; that is how a run is matched to its job in the queue.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from landscape import results
from landscape.config import RunConfig, from_dict
from landscape.pipeline import CELL_DIR, STAGES, finished_seeds
from landscape.runs import run_paths

STATES = ("done", "running", "queued", "started", "failed", "skipped", "missing")
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}
SUBMISSIONS = Path(".submitit") / "submissions.jsonl"


def enabled_units(cfg: RunConfig) -> list[str]:
    """Every stage unit the pipeline would run for ``cfg``, in pipeline order."""
    return [unit for stage in STAGES if stage.enabled(cfg) for unit, _ in stage.units(cfg)]


def _diverged(run_dir: Path) -> bool:
    train = results.read_done(run_dir, "train")
    return train is not None and train.get("status") != "ok"


def pending_units(cfg: RunConfig) -> list[str]:
    """Enabled units of a run without a DONE marker (none once training diverged)."""
    run_dir = run_paths(cfg).run
    if _diverged(run_dir):
        return []
    return [u for u in enabled_units(cfg) if not results.is_done(run_dir, u)]


def cell_units(cfg: RunConfig) -> list[str]:
    return [f"cka_{c}" for c in cfg.cka.checkpoints] if cfg.cka.enabled else []


def stale_cell_units(cfg: RunConfig) -> list[str]:
    """Cell-level units of ``cfg``'s cell that are missing or cover fewer seeds than have
    finished training by now."""
    cell = run_paths(cfg).cell
    seeds = sorted(finished_seeds(cell))
    return [u for u in cell_units(cfg)
            if seeds and (results.read_done(cell / CELL_DIR, u) or {}).get("seeds") != seeds]


# ---------------------------------------------------------------------------------------------
def record_submission(root: Path, backend: str, runs: Sequence[tuple[str, Optional[str], dict]],
                      cell_job_id: Optional[str] = None, cells: Sequence[str] = ()) -> None:
    """Append one submission: ``runs`` holds (run_id, Slurm job id or None, asdict(config))."""
    path = Path(root) / SUBMISSIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"unix": time.time(), "backend": backend, "cell_job_id": cell_job_id,
             "cells": list(cells),
             "runs": [{"run_id": r, "job_id": j, "config": c} for r, j, c in runs]}
    with path.open("a") as f:  # one line per submission
        f.write(json.dumps(entry, default=str) + "\n")


def read_submissions(root: Path) -> list[dict[str, Any]]:
    path = Path(root) / SUBMISSIONS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def squeue_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Slurm state of the queued/running jobs among ``job_ids`` (array tasks as
    ``"<array id>_<index>"``). Empty when Slurm cannot be asked (no squeue here, or the
    controller does not answer), with a warning for the latter."""
    ids = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return {}
    except (OSError, subprocess.TimeoutExpired) as e:
        warnings.warn(f"cannot read the Slurm queue ({e}); states come from files only",
                      stacklevel=2)
        return {}
    if out.returncode != 0:
        if "Invalid job id" not in out.stderr:  # that one just means: none is queued any more
            warnings.warn(f"squeue failed: {out.stderr.strip()}", stacklevel=2)
        return {}
    return dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)


def active_jobs(root: Path) -> dict[str, str]:
    """run_id (or cell name) -> Slurm state, for runs/cells that a queued or running job of a
    recorded submission holds; a later submission wins."""
    subs = [s for s in read_submissions(root) if s.get("backend") == "slurm"]
    states = squeue_states([r.get("job_id") for s in subs for r in s["runs"]]
                           + [s.get("cell_job_id") for s in subs])
    active: dict[str, str] = {}
    for s in subs:
        active.update({r["run_id"]: states[r.get("job_id")] for r in s["runs"]
                       if r.get("job_id") in states})
        if s.get("cell_job_id") in states:
            active.update({c: states[s["cell_job_id"]] for c in s.get("cells", [])})
    return active


# ---------------------------------------------------------------------------------------------
def _failure(run_dir: Path, unit: str) -> Optional[str]:
    return results.read_failure(run_dir, unit)


def _grid_runs(root: Path) -> dict[str, RunConfig]:
    """run_id -> config: runs with a folder, plus submitted runs that have not started."""
    found: list[tuple[str, Any]] = [(r["run_id"], r["config"]) for s in read_submissions(root)
                                    for r in s["runs"]]
    found += [(f"{f.parent.parent.name}/{f.parent.name}", f)
              for f in sorted(root.glob("*/seed=*/config.json"))]
    runs = {}
    for run_id, src in found:
        try:
            data = json.loads(src.read_text()) if isinstance(src, Path) else src
            # Paths from where the folder is now, not where it was when the run was made.
            runs[run_id] = replace(from_dict(RunConfig, data), results_root=str(root))
        except (OSError, ValueError, TypeError) as e:  # e.g. written by an older version
            warnings.warn(f"{run_id}: unreadable config ({e}); left out of the status",
                          stacklevel=2)
    return runs


def _unit_state(run_dir: Path, unit: str, job: Optional[str]) -> tuple[str, str]:
    done = results.read_done(run_dir, unit)
    if done is not None:
        return "done", "" if done.get("status") == "ok" else str(done.get("status"))
    failure = _failure(run_dir, unit)
    if failure is not None:
        return "failed", failure
    if _diverged(run_dir):
        return "skipped", "training diverged"
    if job is not None:
        return ("running" if job in RUNNING else "queued"), ""
    ckpt = run_dir / "checkpoints"
    partial = results.stage_dir(run_dir, unit).exists() or (
        unit == "train" and any((ckpt / n).exists() for n in ("last.pt", "init.pt")))
    return ("started", "") if partial else ("missing", "")


def run_states(root: str | Path) -> pd.DataFrame:
    """One row per (run, unit) and per (cell, cell-level unit): cell, seed, run_id, unit,
    state, reason. ``seed`` is NA for cell-level rows."""
    root = Path(root)
    runs = _grid_runs(root)
    active = active_jobs(root)
    rows, cells = [], {}
    for run_id, cfg in runs.items():
        paths = run_paths(cfg)
        cells.setdefault(paths.cell.name, (paths.cell, cfg))
        for unit in enabled_units(cfg):
            state, reason = _unit_state(paths.run, unit, active.get(run_id))
            rows.append({"cell": paths.cell.name, "seed": cfg.seed, "run_id": run_id,
                         "unit": unit, "state": state, "reason": reason})
    for name, (cell, cfg) in sorted(cells.items()):
        for unit in cell_units(cfg):
            done = results.read_done(cell / CELL_DIR, unit)
            job = active.get(name)
            if done is not None:
                state, reason = "done", f"seeds {done.get('seeds')}"
            elif job is not None:
                state, reason = ("running" if job in RUNNING else "queued"), ""
            else:
                state, reason = "missing", f"{len(finished_seeds(cell))} seeds trained"
            rows.append({"cell": name, "seed": None, "run_id": name, "unit": unit,
                         "state": state, "reason": reason})
    df = pd.DataFrame(rows, columns=["cell", "seed", "run_id", "unit", "state", "reason"])
    return df.astype({"seed": "Int64"})


def status_table(root: str | Path) -> pd.DataFrame:
    """Per cell and unit: how many runs are in each state (columns :data:`STATES`), and the
    reasons of failures (``seed=<s>: <last line of FAILED>``; for cell units, the seeds covered)."""
    df = run_states(root)
    if df.empty:
        return pd.DataFrame(columns=["cell", "unit", "runs", *STATES, "reason"])
    counts = pd.crosstab([df["cell"], df["unit"]], df["state"]).reindex(columns=list(STATES),
                                                                       fill_value=0)
    counts.columns.name = None

    def reasons(g: pd.DataFrame) -> str:
        g = g[g["reason"] != ""]
        return "; ".join(r if pd.isna(s) else f"seed={s}: {r}"
                         for s, r in zip(g["seed"], g["reason"]))

    why = df.groupby(["cell", "unit"])[["seed", "reason"]].apply(reasons).rename("reason")
    out = counts.join(why)
    out.insert(0, "runs", counts.sum(axis=1))
    order = {u: i for i, u in enumerate(dict.fromkeys(df["unit"]))}  # pipeline order
    out = out.reset_index()
    return out.sort_values(["cell", "unit"], key=lambda c: c.map(order) if c.name == "unit"
                           else c).reset_index(drop=True)


def format_status(table: pd.DataFrame) -> str:
    """The table for a terminal: state columns that are zero everywhere are left out."""
    if table.empty:
        return "no runs found"
    keep = [c for c in table.columns if c not in STATES or table[c].any() or c == "done"]
    return table[keep].to_string(index=False)


def status_main(argv: Optional[Sequence[str]] = None) -> int:
    """``landscape-status [results_root] [--runs]``: the grid's state, per cell and unit."""
    p = argparse.ArgumentParser(prog="landscape-status", description=status_main.__doc__)
    p.add_argument("root", nargs="?", default="results", help="results_root (default: results)")
    p.add_argument("--runs", action="store_true", help="one line per run and unit instead")
    args = p.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        p.error(f"no results folder at {root.resolve()}")
    if args.runs:
        print(run_states(root).to_string(index=False))
    else:
        print(format_status(status_table(root)))
    if any(s.get("backend") == "slurm" for s in read_submissions(root)):
        print(f"\nlogs of the Slurm jobs: {root / '.submitit'}/<job id>_<task>_log.out|err")
    return 0
