"""Where a grid stands, per run and stage unit, from the results folders and the Slurm queue.

States of a (run, unit), first match wins:

- ``done``: the unit's DONE marker exists (reason "diverged" for a diverged training);
- ``stale``: done, but with other settings than the current config's (the reason lists
  them), or damaged (its files are not those its DONE marker recorded); running the grid
  again recomputes it;
- ``failed``: a FAILED file exists; the reason is its last line (the exception);
- ``skipped``: training diverged, so this later unit will never run;
- ``running`` / ``queued``: a live Slurm job of a recorded submission holds the run and is
  running / waiting (pending, requeued, held); all undone units of a running run show running;
- ``started``: partial output (the stage folder, or training checkpoints) but no live job: the
  run is running locally, or it was killed; resubmitting resumes it;
- ``missing``: nothing yet.

Cell-level units (the receptive field, ``cka_<checkpoint>``) are one row per cell; for units
that need trained seeds the reason lists the seeds they cover. The launcher records which array
task holds which run (``results.record_submission``); that is how a run is matched to its job
in the queue. Reading a results folder imports no code named in it (e.g. ``prune.imports``).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from landscape import results
from landscape.config import RunConfig, from_dict
from landscape.grid.plan import cell_units, diverged
from landscape.grid.slurm import RUNNING, active_jobs
from landscape.identity import identify
from landscape.pipeline import stage_units

STATES = ("done", "stale", "running", "queued", "started", "failed", "skipped", "missing")


def grid_runs(root: Path) -> dict[str, RunConfig]:
    """run_id -> config: runs with a folder, plus submitted runs that have not started; every
    path re-based on ``root`` (where the folder is now, not where it was made)."""
    found: list[tuple[str, Any]] = [(r["run_id"], r["config"])
                                    for s in results.read_submissions(root) for r in s["runs"]]
    found += list(results.run_configs(root).items())
    runs = {}
    for run_id, data in found:
        try:
            runs[run_id] = dataclasses.replace(from_dict(RunConfig, data), results_root=str(root))
        except (ValueError, TypeError) as e:  # e.g. written by an older version
            warnings.warn(f"{run_id}: unreadable config ({e}); left out of the status",
                          stacklevel=2)
    return runs


def _unit_state(run_dir: Path, unit: str, stale: Callable[[], Optional[str]],
                job: Optional[str]) -> tuple[str, str]:
    done = results.read_done(run_dir, unit)
    if done is not None:
        why = stale()
        if why is not None:
            return "stale", why
        return "done", "" if done.get("status") == "ok" else str(done.get("status"))
    failure = results.read_failure(run_dir, unit)
    if failure is not None:
        return "failed", failure
    if diverged(run_dir):
        return "skipped", "training diverged"
    if job is not None:
        return ("running" if job in RUNNING else "queued"), ""
    ckpt = run_dir / "checkpoints"
    partial = results.stage_dir(run_dir, unit).exists() or (
        unit == "train" and any((ckpt / n).exists() for n in ("last.pt", "init.pt")))
    return ("started", "") if partial else ("missing", "")


def _cell_state(cfg: RunConfig, paths: results.RunPaths, unit: str,
                job: Optional[str]) -> tuple[str, str]:
    trained = {u.name for _, _, u in stage_units(cfg, "cell", needs_trained=True)}
    done = results.read_done(paths.cell_stages, unit)
    if done is not None:
        damage = results.unit_damage(paths.cell_stages, unit, done)
        if damage is not None:
            return "stale", damage
        return "done", f"seeds {done.get('seeds')}" if unit in trained else ""
    failure = results.read_failure(paths.cell_stages, unit)
    if failure is not None:
        return "failed", failure
    if job is not None:
        return ("running" if job in RUNNING else "queued"), ""
    seeds = len(results.trained_seeds(paths.cell))
    return "missing", f"{seeds} seeds trained" if unit in trained else ""


def run_states(root: str | Path) -> pd.DataFrame:
    """One row per (run, unit) and per (cell, cell-level unit): cell, seed, run_id, unit,
    state, reason. ``seed`` is NA for cell-level rows."""
    root = Path(root)
    runs = grid_runs(root)
    active = active_jobs(root)
    rows, cells = [], {}
    for run_id, cfg in runs.items():
        ident = identify(cfg)
        paths = results.run_paths(root, ident.cell_name, cfg.seed)
        cells.setdefault(ident.cell_name, (paths, cfg))
        for stage, config, unit in stage_units(cfg, "run"):
            state, reason = _unit_state(
                paths.run_dir, unit.name, functools.partial(
                    stage.stale_reason, config, paths.run_dir, unit.name),
                active.get(run_id))
            rows.append({"cell": ident.cell_name, "seed": cfg.seed, "run_id": run_id,
                         "unit": unit.name, "state": state, "reason": reason})
    for name, (paths, cfg) in sorted(cells.items()):
        for unit in cell_units(cfg):
            state, reason = _cell_state(cfg, paths, unit, active.get(name))
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
