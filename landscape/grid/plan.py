"""Planning a grid: which stage units of which runs are unfinished, which cells need their
cell-level stages, and which runs a live job of an earlier submission already holds.

A run is finished when every enabled run-level unit has its DONE marker (or its training
diverged, after which no later unit can run). Everything is addressed relative to the grid's
results root, whatever root the runs' configs were written with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from landscape import results
from landscape.config import RunConfig
from landscape.identity import identify
from landscape.pipeline import import_user_modules, stage_units


def enabled_units(cfg: RunConfig) -> list[str]:
    """Every run-level stage unit the pipeline would run for ``cfg``, in pipeline order."""
    return [unit.name for _, _, unit in stage_units(cfg, "run")]


def cell_units(cfg: RunConfig) -> list[str]:
    """Every cell-level stage unit of ``cfg``'s cell, in pipeline order."""
    return [unit.name for _, _, unit in stage_units(cfg, "cell")]


def diverged(run_dir: Path) -> bool:
    train = results.read_done(run_dir, "train")
    return train is not None and train.get("status") == "diverged"


def pending_units(cfg: RunConfig) -> list[str]:
    """Enabled run-level units of a run that are not done with their current settings (none
    once training diverged)."""
    ident = identify(cfg)
    run_dir = results.run_paths(cfg.results_root, ident.cell_name, cfg.seed).run_dir
    if diverged(run_dir):
        return []
    return [unit.name for stage, config, unit in stage_units(cfg, "run")
            if stage.stale_reason(config, run_dir, unit.name) is not None]


def stale_cell_units(cfg: RunConfig) -> list[str]:
    """Cell-level units that need trained seeds and are missing or cover fewer seeds than have
    finished training by now."""
    paths = results.run_paths(cfg.results_root, identify(cfg).cell_name)
    seeds = results.trained_seeds(paths.cell)
    return [unit.name for stage, config, unit in stage_units(cfg, "cell", needs_trained=True)
            if seeds and stage.stale_reason(config, paths.cell_stages, unit.name,
                                            seeds) is not None]


def config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted names of the settings in which two run configs differ (sorted)."""
    def flat(value: object, prefix: str = "") -> dict[str, object]:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: v for key, item in value.items()
                    for k, v in flat(item, f"{prefix}{key}.").items()} or {prefix[:-1]: {}}
        return {prefix[:-1]: value}

    fa, fb = flat(a), flat(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, "<unset>") != fb.get(k, "<unset>"))


@dataclass(frozen=True)
class PendingRun:
    cfg: RunConfig
    run_id: str
    units: tuple[str, ...]  # stage units still to do


@dataclass(frozen=True)
class GridPlan:
    """What a submission of a grid would do. ``cells`` holds one config per cell (its lowest
    seed); ``active`` the runs skipped because a job of an earlier submission still holds them."""

    root: Path
    runs: tuple[RunConfig, ...]
    pending: tuple[PendingRun, ...]
    active: tuple[str, ...]
    cells: tuple[RunConfig, ...]
    stale_cells: tuple[str, ...]

    @property
    def needs_cell_job(self) -> bool:
        """Cell-level work (CKA, report) is due: runs will finish, or CKA lags behind."""
        wanted = any(stage_units(c, "cell", needs_trained=True) or c.report for c in self.cells)
        return wanted and bool(self.pending or self.stale_cells)

    def cell_names(self) -> list[str]:
        return [identify(c).cell_name for c in self.cells]


def plan_grid(cfgs: Sequence[RunConfig], *, active_jobs: dict[str, str] | None = None
              ) -> GridPlan:
    """Resolve ``results_root`` to an absolute path, drop duplicate runs, find what is left.
    ``active_jobs``: run_id -> state of runs held by live jobs (see ``grid.slurm``)."""
    if not cfgs:
        raise ValueError("the grid is empty: no run configs were given")
    cfgs = [dataclasses.replace(c, results_root=str(Path(c.results_root).expanduser().resolve()))
            for c in cfgs]
    roots = sorted({c.results_root for c in cfgs})
    if len(roots) > 1:
        raise ValueError(f"a grid must share one results_root, got {roots}")
    for c in cfgs:
        import_user_modules(c)  # user stages must be registered to know their units
    ids: dict[str, RunConfig] = {}
    for c in cfgs:
        run_id = identify(c).run_id
        if run_id in ids and c != ids[run_id]:
            raise ValueError(
                f"two configs of the grid are one run ({run_id}) with different settings "
                f"({', '.join(config_differences(ids[run_id], c))}): settings outside the run's "
                "identity (stage settings, train.save_epochs, train.track) cannot be swept in "
                "one submission. Submit them one after another (each adds its own stage units "
                "to the run), or put the values in one list where the stage takes a list "
                "(e.g. prune.rates)")
        ids[run_id] = c
    active = active_jobs or {}
    pending, skipped = [], []
    for run_id, c in ids.items():
        units = pending_units(c)
        if units and run_id in active:
            skipped.append(run_id)
        elif units:
            pending.append(PendingRun(c, run_id, tuple(units)))
    cells: dict[str, RunConfig] = {}
    for c in sorted(ids.values(), key=lambda c: c.seed):
        cells.setdefault(identify(c).cell_name, c)
    stale = tuple(name for name, c in cells.items() if stale_cell_units(c))
    return GridPlan(Path(roots[0]), tuple(ids.values()), tuple(pending), tuple(skipped),
                    tuple(cells.values()), stale)
