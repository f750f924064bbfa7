"""Planning a grid: which stage units of which runs are unfinished, which cells need their
cell-level stages, and which runs a live job of an earlier submission already holds.

A run is finished when every enabled run-level unit has its DONE marker (or its training
diverged, after which no later unit can run). Everything is addressed relative to the grid's
results root, whatever root the runs' configs were written with.

Several stage settings of one run in one submission: ``prune.criterion=magnitude,obd,grasp``
makes configs that are one run (the same identity: model, data, training, seed) with other
stage settings. They are its *variants*: the run trains once, then each variant's stage units
run in turn in the run's job, each under its own unit name (the names carry the settings that
tell them apart). Two variants that would write one unit with different settings (a sweep of a
setting a unit's name does not carry, e.g. ``hessian.n_samples``) are refused before anything
is submitted: the second would replace the first's rows.
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


def training_marker(run_dir: Path) -> dict | None:
    """The DONE marker of the run's training (None: not finished)."""
    return results.read_done(run_dir, "train")


def diverged(run_dir: Path) -> bool:
    train = training_marker(run_dir)
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


# Top-level fields of the settings a run trains with: the variants of one run share them.
TRAINING = ("model", "data", "train", "device")


def group_variants(cfgs: Sequence[RunConfig]) -> dict[str, tuple[RunConfig, ...]]:
    """run_id -> the run's distinct configs, in grid order (equal configs once). Raises
    ValueError when two of a run's configs would write a unit with different settings."""
    runs: dict[str, list[RunConfig]] = {}
    for c in cfgs:
        variants = runs.setdefault(identify(c).run_id, [])
        if c not in variants:
            variants.append(c)
    for run_id, variants in runs.items():
        if len(variants) > 1:
            check_disjoint(run_id, variants)
    return {run_id: tuple(v) for run_id, v in runs.items()}


def check_disjoint(run_id: str, variants: Sequence[RunConfig]) -> None:
    """Every run- and cell-level unit that several variants have is recorded with the same
    settings by each (else ValueError naming the unit and the settings)."""
    for c in variants[1:]:
        fixed = [k for k in config_differences(variants[0], c) if k.split(".")[0] in TRAINING]
        if fixed:
            raise ValueError(
                f"two configs of the grid are one run ({run_id}) trained with different "
                f"settings ({', '.join(fixed)}): a run trains once, so its training settings "
                f"outside the identity must be the same in every config of the run")
    seen: dict[tuple[str, str], tuple[dict, RunConfig]] = {}
    for c in variants:
        for level in ("run", "cell"):
            for stage, config, unit in stage_units(c, level):
                settings = stage.unit_settings(config, unit.name)
                first = seen.setdefault((level, unit.name), (settings, c))
                if first[0] != settings:
                    differ = [k for k in sorted(first[0].keys() | settings.keys())
                              if first[0].get(k, "<unset>") != settings.get(k, "<unset>")]
                    raise ValueError(
                        f"two configs of the grid are one run ({run_id}) whose {level}-level "
                        f"unit {unit.name!r} would be written with different settings "
                        f"({', '.join(differ)}; the configs differ in "
                        f"{', '.join(config_differences(first[1], c))}): the second would "
                        f"replace the first's rows, as a later submission with its value "
                        f"does. Settings a unit's name carries (e.g. prune.criterion, "
                        f"prune.finetune_recipe, hessian.checkpoints) can be swept in one "
                        f"submission, and a stage that takes a list takes the values in one "
                        f"(e.g. prune.rates)")


@dataclass(frozen=True)
class PendingRun:
    variants: tuple[RunConfig, ...]  # the run's configs (group_variants), run in this order
    run_id: str
    units: tuple[str, ...]  # stage units still to do, of every variant

    @property
    def cfg(self) -> RunConfig:
        """The run's first config: the one it trains with (its identity, its resources)."""
        return self.variants[0]


@dataclass(frozen=True)
class GridPlan:
    """What a submission of a grid would do. ``runs`` holds each run's first config;
    ``cells`` each cell's configs (of its lowest seed, one per variant); ``active`` the runs
    skipped because a job of an earlier submission still holds them."""

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
        return list(dict.fromkeys(identify(c).cell_name for c in self.cells))


def plan_grid(cfgs: Sequence[RunConfig], *, active_jobs: dict[str, str] | None = None
              ) -> GridPlan:
    """Resolve ``results_root`` to an absolute path, group the configs of each run (its
    variants, :func:`group_variants`), find what is left. ``active_jobs``: run_id -> state of
    runs held by live jobs (see ``grid.slurm``)."""
    if not cfgs:
        raise ValueError("the grid is empty: no run configs were given")
    cfgs = [dataclasses.replace(c, results_root=str(Path(c.results_root).expanduser().resolve()))
            for c in cfgs]
    roots = sorted({c.results_root for c in cfgs})
    if len(roots) > 1:
        raise ValueError(f"a grid must share one results_root, got {roots}")
    for c in cfgs:
        import_user_modules(c)  # user stages must be registered to know their units
    runs = group_variants(cfgs)
    active = active_jobs or {}
    pending, skipped = [], []
    for run_id, variants in runs.items():
        units = list(dict.fromkeys(u for c in variants for u in pending_units(c)))
        if units and run_id in active:
            skipped.append(run_id)
        elif units:
            pending.append(PendingRun(variants, run_id, tuple(units)))
    cells: dict[str, tuple[RunConfig, ...]] = {}
    for variants in sorted(runs.values(), key=lambda v: v[0].seed):
        cells.setdefault(identify(variants[0]).cell_name, variants)
    stale = tuple(name for name, variants in cells.items()
                  if any(stale_cell_units(c) for c in variants))
    return GridPlan(Path(roots[0]), tuple(v[0] for v in runs.values()), tuple(pending),
                    tuple(skipped), tuple(c for v in cells.values() for c in v), stale)
