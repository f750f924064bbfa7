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
- ``started``: partial output (the stage folder, training checkpoints, or a unit's saved
  progress) but no live job: the run is running locally, or it was killed; resubmitting
  resumes it. A unit that saved progress on the way says where (and, for a measuring unit,
  the computing time it holds) in the reason, also while running or queued; training says
  the epoch its ``last.pt`` holds ("epoch <k> of <epochs> saved");
- ``missing``: nothing yet.

A run's units are those of the configs its latest submission gave it (its variants), and the
units of earlier submissions' configs that those do not name, where they are not ``missing``
(what an earlier submission ran stays in view; a request never started is not listed).

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
from landscape.grid.plan import cell_units, config_differences, diverged
from landscape.grid.slurm import RUNNING, active_jobs
from landscape.pipeline import stage_units
from landscape.results.layout import RUN_CONFIG
from landscape.stages.scratch import saved_progress
from landscape.train import saved_epoch

STATES = ("done", "stale", "running", "queued", "started", "failed", "skipped", "missing")


def grid_runs(root: Path, submissions: Optional[list[dict[str, list[RunConfig]]]] = None
              ) -> dict[str, list[RunConfig]]:
    """run_id -> its configs: runs with a folder, plus submitted runs that have not started;
    every path re-based on ``root`` (where the folder is now, not where it was made). A run
    has the configs its latest submission gave it (several: its variants,
    ``landscape.grid.plan.group_variants``), or the config it last ran with when that is none
    of them and was written after that submission (a run started by hand since; one written
    before is what the submission will change). ``submissions``: :func:`submitted` of
    ``root``."""
    runs: dict[str, list[RunConfig]] = {}
    for this in submitted(root) if submissions is None else submissions:
        runs.update(this)  # a later submission replaces the earlier ones
    when = {r["run_id"]: float(s.get("unix") or 0) for s in results.read_submissions(root)
            for r in s["runs"]}
    for run_id, data in results.run_configs(root).items():
        cfg = _config(root, run_id, data)
        if cfg is None or any(_same(cfg, v) for v in runs.get(run_id, [])):
            continue
        if run_id in runs and _written(root, run_id) < when.get(run_id, 0.0):
            continue  # resubmitted since it ran: the submission's settings are the grid's
        runs[run_id] = [cfg]
    return runs


def _written(root: Path, run_id: str) -> float:
    """When the run's ``config.json`` was last written (0 when unreadable)."""
    try:
        return (root / run_id / RUN_CONFIG).stat().st_mtime
    except OSError:
        return 0.0


def submitted(root: Path) -> list[dict[str, list[RunConfig]]]:
    """Each recorded submission, oldest first: run_id -> the configs it gave the run."""
    out = []
    for s in results.read_submissions(root):
        this: dict[str, list[RunConfig]] = {}
        for r in s["runs"]:
            cfg = _config(root, r["run_id"], r["config"])
            if cfg is not None:
                this.setdefault(r["run_id"], []).append(cfg)
        out.append(this)
    return out


def earlier_configs(submissions: list[dict[str, list[RunConfig]]],
                    runs: dict[str, list[RunConfig]]) -> dict[str, list[RunConfig]]:
    """run_id -> the configs earlier submissions gave it that are none of ``runs``' (its
    current ones), the latest first: their units that the current configs do not name (the
    magnitude units after a submission of another criterion) are shown where they are on
    disk (done, failed, started)."""
    out: dict[str, list[RunConfig]] = {}
    for this in reversed(submissions):
        for run_id, configs in this.items():
            kept = out.setdefault(run_id, [])
            for cfg in configs:
                if not any(_same(cfg, v) for v in [*runs.get(run_id, []), *kept]):
                    kept.append(cfg)
    return {k: v for k, v in out.items() if v}


def _config(root: Path, run_id: str, data: Any) -> Optional[RunConfig]:
    try:
        return dataclasses.replace(from_dict(RunConfig, data), results_root=str(root))
    except (ValueError, TypeError) as e:  # e.g. written by an older version
        warnings.warn(f"{run_id}: unreadable config ({e}); left out of the status",
                      stacklevel=3)
        return None


def _same(a: RunConfig, b: RunConfig) -> bool:
    """One config, but for what a launcher sets as it starts the run (its threads)."""
    return not [k for k in config_differences(a, b) if k not in ("num_threads", "progress")]


def _unit_state(run_dir: Path, unit: str, stale: Callable[[], Optional[str]],
                job: Optional[str], epochs: int,
                settings: Callable[[], dict]) -> tuple[str, str]:
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
    ckpt = run_dir / "checkpoints"
    if unit == "train":
        epoch = saved_epoch(ckpt)
        saved = None if epoch is None else f"epoch {epoch} of {epochs} saved"
    else:
        saved = saved_progress(ckpt, unit, settings())
    if job is not None:
        return ("running" if job in RUNNING else "queued"), saved or ""
    partial = saved is not None or results.stage_dir(run_dir, unit).exists() or (
        unit == "train" and any((ckpt / n).exists() for n in ("last.pt", "init.pt")))
    return ("started", saved or "") if partial else ("missing", "")


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
    settings = next(stage.unit_settings(config, u.name)
                    for stage, config, u in stage_units(cfg, "cell") if u.name == unit)
    saved = saved_progress(paths.cell_scratch, unit, settings)
    if job is not None:
        return ("running" if job in RUNNING else "queued"), saved or ""
    if saved is not None:
        return "started", saved
    seeds = len(results.trained_seeds(paths.cell))
    return "missing", f"{seeds} seeds trained" if unit in trained else ""


def run_states(root: str | Path) -> pd.DataFrame:
    """One row per (run, unit) and per (cell, cell-level unit): cell, seed, run_id, unit,
    state, reason. ``seed`` is NA for cell-level rows."""
    root = Path(root)
    submissions = submitted(root)
    runs = grid_runs(root, submissions)
    earlier = earlier_configs(submissions, runs)
    active = active_jobs(root)
    rows, cells = [], {}
    for run_id, variants in runs.items():
        # The records name the cell: the status identifies no run, so it needs none of the
        # models and datasets that user modules register.
        cell = results.cell_of(run_id)
        paths = results.run_paths(root, cell, variants[0].seed)
        tagged = [(c, True) for c in variants] + [(c, False) for c in earlier.get(run_id, [])]
        cells.setdefault(cell, (paths, tagged))
        seen = set()  # a unit of several variants has one state (the same settings)
        for cfg, current in tagged:
            for stage, config, unit in stage_units(cfg, "run"):
                if unit.name in seen:
                    continue
                state, reason = _unit_state(
                    paths.run_dir, unit.name, functools.partial(
                        stage.stale_reason, config, paths.run_dir, unit.name),
                    active.get(run_id), cfg.train.epochs,
                    functools.partial(stage.unit_settings, config, unit.name))
                if current or state != "missing":  # an earlier request: shown where it ran
                    seen.add(unit.name)
                    rows.append({"cell": cell, "seed": cfg.seed, "run_id": run_id,
                                 "unit": unit.name, "state": state, "reason": reason})
    for name, (paths, configs) in sorted(cells.items()):
        units: dict[str, tuple[RunConfig, bool]] = {}
        for c, current in configs:
            for u in cell_units(c):
                if u not in units or current and not units[u][1]:
                    units[u] = (c, current)
        for unit, (cfg, current) in units.items():
            state, reason = _cell_state(cfg, paths, unit, active.get(name))
            if current or state != "missing":
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
