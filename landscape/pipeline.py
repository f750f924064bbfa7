"""Orders and iterates the registered stages of a run and of a cell; skips what is done.

``run(cfg)``: validate everything before any file is written; then the cell-level stages that
need no training (the receptive field, once per cell), then the run-level stages in registry
order. ``run_cell(root, cell)``: the cell-level stages that need trained seeds (CKA), over the
seeds whose training finished. A unit is skipped when it is done with the current settings (and
seeds), and computed under its lock otherwise. This module knows no stage by name."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from landscape import results
from landscape.config import RunConfig, from_dict, identity_dict, stage_config
from landscape.context import RunResources
from landscape.data.registry import check_dataset, dataset_folder
from landscape.device import configure_backends, device_settings, full_precision, resolve_device
from landscape.identity import RunIdentity, identify, warn_parameter_change
from landscape.registry import import_modules
from landscape.results import RunPaths
from landscape.stages import Output, Stage, Unit, check_saved_checkpoints, registered_stages

log = logging.getLogger("landscape")


def stage_units(cfg: RunConfig, level: str, *,
                needs_trained: Optional[bool] = None) -> list[tuple[Stage, Any, Unit]]:
    """(stage, its settings, unit) of every enabled stage of ``level``, in pipeline order."""
    out = []
    for stage in registered_stages(level):
        config = stage_config(cfg, stage)
        if needs_trained is not None and stage.needs_trained != needs_trained:
            continue
        if stage.enabled(config):
            out += [(stage, config, unit) for unit in stage.units(config)]
    return out


def import_user_modules(cfg: RunConfig) -> None:
    """Import the modules listed in ``imports`` (user stages, models, datasets register there)."""
    import_modules(cfg.imports, field="imports")


def validate(cfg: RunConfig, *, check_data: bool = True) -> RunIdentity:
    """Everything that can be checked before a file is written: the user modules import, the
    results root, the data on disk (unless ``check_data``), the identity (an impossible pool
    for the input size fails here) and the settings of every enabled stage."""
    import_user_modules(cfg)
    check_seed(cfg.seed)
    results.check_root(cfg.results_root)
    check_apart(cfg.results_root, cfg.data)
    if check_data:
        check_dataset(cfg.data)
    identity = identify(cfg)
    warn_parameter_change(identity)
    user = {s.name for s in registered_stages() if s.config_class is not None}
    unknown = sorted(set(cfg.stages) - user)
    if unknown:
        raise ValueError(f"stages.{unknown[0]}: no such stage; stages that take settings "
                         f"there: {', '.join(sorted(user)) or 'none (list yours in imports)'}")
    enabled = {}
    for stage in registered_stages():
        config = stage_config(cfg, stage)
        stage.validate(config)  # disabled stages too: a typo is caught before it matters
        if stage.enabled(config):
            check_saved_checkpoints(stage, config, cfg.train)
            stage.validate_for(config, identity)
            enabled[stage.name] = config
    for stage in registered_stages():
        if stage.name in enabled:
            stage.validate_across(enabled[stage.name], enabled)
    paths = results.run_paths(cfg.results_root, identity.cell_name, cfg.seed)
    results.check_lengths(
        [results.stage_dir(paths.cell_stages, u.name) for _, _, u in stage_units(cfg, "cell")]
        + [results.stage_dir(paths.run_dir, u.name) for _, _, u in stage_units(cfg, "run")]
        + [paths.checkpoints])
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or null, got {cfg.num_threads}")
    resolve_device(cfg.device)
    return identity


MAX_SEED = 2**63 - 1  # the seed column is a 64-bit integer


def check_seed(seed: Any) -> None:
    """``seed`` must be an integer in [0, 2**63 - 1] (rows store it as a 64-bit integer)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1 = {MAX_SEED}], got {seed!r}")


def check_apart(results_root: str, data: Any) -> None:
    """The results root must neither lie inside the dataset's folder nor contain it: result
    folders among a dataset's files change what its loader finds (a cell folder among Tiny
    ImageNet's class folders), and every walk of the results would crawl the dataset."""
    folder = dataset_folder(data)
    if folder is None:
        return
    root, folder = Path(results_root).expanduser().resolve(), folder.expanduser().resolve()
    if root == folder or folder in root.parents or root in folder.parents:
        where = "inside" if folder in root.parents or root == folder else "around"
        raise results.ResultsRootError(
            f"results_root={results_root} lies {where} the dataset folder {folder} "
            f"(data.root={data.root}); put the results in a folder of their own, e.g. "
            f"results_root={folder.parent.parent / 'results' if where == 'inside' else 'results'}")


def _why(stage: Stage, config: Any, unit: Unit, out_dir: Path, paths: RunPaths,
         seeds: Optional[list[int]] = None) -> Optional[str]:
    """Why the unit must be computed (not done, other settings or seeds, a deleted output),
    or None when it is current."""
    return stage.stale_reason(config, out_dir, unit.name, seeds) or stage.missing_outputs(paths)


def _execute(stage: Stage, config: Any, unit: Unit, ctx: RunResources, out_dir: Path,
             why: str, info: Optional[dict] = None) -> Optional[str]:
    """Run one unit under its lock, add the identity columns, write rows + arrays + DONE (or
    FAILED); the unit's status, or None when it was not computed here: another live process
    holds its lock (expected for a cell unit, which the cell's seeds share: logged at INFO;
    a warning for a run unit), or finished it while we waited for the lock. A unit recomputed
    because its settings or seeds changed loses its DONE marker first, so it is never marked
    done with rows of other settings."""
    lock = results.try_lock(out_dir, unit.name)
    if isinstance(lock, str):
        shared = out_dir == ctx.paths.cell_stages
        log.log(logging.INFO if shared else logging.WARNING, "%s: %s is being computed by %s%s; "
                "skipping it here", ctx.identity.run_id, unit.name, lock,
                " (another run of this cell)" if shared else "")
        return None
    with lock:
        if _why(stage, config, unit, out_dir, ctx.paths, (info or {}).get("seeds")) is None:
            # another process finished it before we got the lock
            return None
        return _compute(stage, config, unit, ctx, out_dir, why, info)


def _compute(stage: Stage, config: Any, unit: Unit, ctx: RunResources, out_dir: Path,
             why: str, info: Optional[dict]) -> str:
    results.clean_temp(results.stage_dir(out_dir, unit.name))  # of a killed writer
    if why != "not done":
        log.warning("%s: %s: %s; recomputing it (its rows are replaced)",
                    ctx.identity.run_id, unit.name, why)
        results.clear_done(out_dir, unit.name)
    info = {"settings": stage.unit_settings(config, unit.name), **(info or {})}
    t0 = time.perf_counter()
    try:
        with contextlib.nullcontext() if stage.trains else full_precision(ctx.settings.device):
            out = stage.run(ctx, config, unit)
        out = out if isinstance(out, Output) else Output(list(out))
        diverged = any(r["metric"] == "diverged" and r["value"] for r in out.rows)
        status = "diverged" if diverged else "ok"
        identity = ctx.identity.columns()
        epoch = ctx.unit_epoch(unit)
        at = {} if epoch is None else {"epoch": epoch}
        results.write_stage(out_dir, unit.name,
                            [{**identity, "stage": stage.name, **at, **r, "unit": unit.name}
                             for r in out.rows],
                            status=status, arrays=out.arrays,
                            info={"seconds": time.perf_counter() - t0, **unit.params, **info})
    except Exception:
        results.write_failure(out_dir, unit.name, traceback.format_exc())
        raise
    return status


@dataclass
class RunSummary:
    run_dir: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    status: str = "ok"


def run(cfg: RunConfig) -> RunSummary:
    """Run every enabled stage unit of one run (cell + seed) that is not done yet."""
    identity = validate(cfg)
    paths = results.run_paths(cfg.results_root, identity.cell_name, cfg.seed)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    settings = device_settings(resolve_device(cfg.device), amp=cfg.train.amp,
                               channels_last=cfg.train.channels_last)
    configure_backends(settings.device, deterministic=cfg.train.deterministic)
    try:
        paths.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise results.ResultsRootError(f"results_root={cfg.results_root}: cannot create "
                                       f"{paths.run_dir} ({e.strerror})") from None
    results.write_run_records(paths, identity_dict(cfg), dataclasses.asdict(cfg))
    summary = RunSummary(run_dir=str(paths.run_dir))
    cell_ctx = RunResources(cfg, identity.with_seed(None), paths, settings)
    for stage, config, unit in stage_units(cfg, "cell", needs_trained=False):
        why = _why(stage, config, unit, paths.cell_stages, paths)
        if why is not None and _execute(stage, config, unit, cell_ctx, paths.cell_stages,
                                        why) is not None:
            summary.ran.append(unit.name)
    ctx = RunResources(cfg, identity, paths, settings)
    for stage, config, unit in stage_units(cfg, "run"):
        trained = (results.read_done(paths.run_dir, "train") or {}).get("status") == "ok"
        why = _why(stage, config, unit, paths.run_dir, paths)
        if why is None or (stage.needs_trained and not trained):
            summary.skipped.append(unit.name)
            continue
        log.info("%s: running stage %s", identity.run_id, unit.name)
        try:
            status = _execute(stage, config, unit, ctx, paths.run_dir, why)
        except Exception:
            summary.status = "failed"
            raise
        if status is None:
            summary.skipped.append(unit.name)
            continue
        summary.ran.append(unit.name)
        if status != "ok":
            summary.status = status
    if not summary.ran:
        log.info("%s: nothing to do here (done, held by another process, or waiting for "
                 "training): %s", identity.run_id, ", ".join(summary.skipped))
    return summary


# ---------------------------------------------------------------------------------------------
@dataclass
class CellSummary:
    cell_dir: str
    seeds: list[int]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def cell_config(root: str | Path, cell: str,
                overrides: Optional[RunConfig] = None) -> Optional[RunConfig]:
    """The config of a cell's cell-level stages: that of its lowest trained seed (None if no
    seed finished training), with ``overrides``' cell-level stage settings and device."""
    root = Path(root)
    seeds = results.trained_seeds(root / cell)
    stored = results.run_configs(root, cell)
    if not seeds or f"{cell}/seed={seeds[0]}" not in stored:
        return None
    base = from_dict(RunConfig, stored[f"{cell}/seed={seeds[0]}"])
    # Paths from where the folder is now, not where it was when the run was made.
    base = dataclasses.replace(base, results_root=str(root))
    if overrides is not None:
        changes = {s.config_field: getattr(overrides, s.config_field)
                   for s in registered_stages("cell") if s.config_field}
        base = dataclasses.replace(base, device=overrides.device, stages=overrides.stages,
                                   **changes)
    return base


def run_cell(root: str | Path, cell: str, *, overrides: Optional[RunConfig] = None
             ) -> CellSummary:
    """The cell-level stages that need trained seeds, over the seeds of ``root/cell`` whose
    training finished. A unit is redone when more seeds have finished since it was written.
    The stage settings come from ``overrides`` (e.g. the command line) or else from the runs'
    stored configs; every path is relative to ``root`` (a copied folder works in place)."""
    root = Path(root)
    seeds = results.trained_seeds(root / cell)
    summary = CellSummary(cell_dir=str(root / cell), seeds=seeds)
    cfg = cell_config(root, cell, overrides)
    if cfg is None:
        return summary
    import_user_modules(cfg)
    work = stage_units(cfg, "cell", needs_trained=True)
    identity = identify(cfg).with_seed(None)
    for stage, config, _ in work:
        stage.validate(config)
        stage.validate_for(config, identity)
    paths = results.run_paths(root, cell)
    settings = device_settings(resolve_device(cfg.device), amp=False, channels_last=False)
    ctx = RunResources(cfg, identity, paths, settings, seeds)
    for stage, config, unit in work:
        why = _why(stage, config, unit, paths.cell_stages, paths, seeds)
        if why is None:
            summary.skipped.append(unit.name)
            continue
        log.info("%s: running cell stage %s over seeds %s", cell, unit.name, seeds)
        if why.startswith("seeds changed"):  # more seeds finished: expected, not a warning
            why = "not done"
        done = _execute(stage, config, unit, ctx, paths.cell_stages, why, info={"seeds": seeds})
        (summary.skipped if done is None else summary.ran).append(unit.name)
    return summary


def run_cells(root: str | Path, *, overrides: Optional[RunConfig] = None) -> list[CellSummary]:
    """:func:`run_cell` for every cell folder under ``root``."""
    return [run_cell(root, cell, overrides=overrides) for cell in results.cell_names(root)]
