"""``landscape-submit``: compose a grid from the Hydra config tree and launch it (Hydra edge).

    landscape-submit experiment=paper_cifar10 launcher=slurm launcher.partition=gpu
    landscape-submit experiment=demo launcher=local launcher.local_workers=2
    landscape-submit model=vgg19 model.pool_level=1,2,3,4 seed=0,1,2 launcher=slurm --dry-run

Arguments are Hydra overrides, as for ``landscape-run -m``. The grid is the cartesian product
of the sweeps in the experiment's ``hydra.sweeper.params`` and on the command line (a command
line value replaces the experiment's sweep of the same key), expanded by Hydra's basic sweeper;
each run is composed exactly like a ``landscape-run`` job. ``launcher=<name>`` and
``launcher.<field>=...`` choose and change ``configs/launcher/<name>.yaml`` (default: local).

This is not a ``@hydra.main``: experiments set ``hydra.mode: MULTIRUN``, which would call a main
once per grid point, and hydra-submitit-launcher blocks until every job has finished and has no
dependent job; so the grid is composed with Hydra's compose API and submitted by
:mod:`landscape.launch`, and this command returns as soon as sbatch has answered.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from landscape.cli import CONFIG_DIR, to_run_config
from landscape.config import RunConfig
from landscape.launch import (GridPlan, LauncherConfig, Submission, SubmissionError,
                              executor_parameters, launch, plan_grid, submitit_folder,
                              usable_cpus, validate_launcher)
from landscape.status import format_status, status_table

ConfigStore.instance().store(group="launcher", name="schema", node=LauncherConfig)
DEFAULT_LAUNCHER = "local"


def split_overrides(args: Sequence[str]) -> tuple[list[str], str, list[str]]:
    """(run overrides, launcher name, ``launcher.*`` overrides) of a command line."""
    run, name, launcher = [], DEFAULT_LAUNCHER, []
    for arg in args:
        key = arg.lstrip("+~").split("=", 1)[0]
        if key == "launcher":
            name = arg.split("=", 1)[1]
        elif key.startswith("launcher."):
            launcher.append(arg)
        else:
            run.append(arg)
    return run, name, launcher


def expand_grid(overrides: Sequence[str], *, config_dir: str = CONFIG_DIR,
                config_name: str = "config") -> list[RunConfig]:
    """The runs of a Hydra multirun (experiment sweeps x command-line sweeps), as RunConfigs."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        base = compose(config_name, overrides=fixed, return_hydra_config=True)
        params = base.hydra.sweeper.get("params") or {}
        sweep = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(overrides))
        combos = BasicSweeper.split_arguments(sweep, max_batch_size=None)[0]
        return [to_run_config(compose(config_name, overrides=list(c))) for c in combos]


def load_launcher(name: str, overrides: Sequence[str] = (), *,
                  config_dir: str = CONFIG_DIR) -> LauncherConfig:
    """``configs/launcher/<name>.yaml`` with ``launcher.<field>=...`` overrides applied."""
    choices = sorted(p.stem for p in (Path(config_dir) / "launcher").glob("*.yaml"))
    if name not in choices:
        raise ValueError(f"unknown launcher {name!r}; choose one of {choices} "
                         f"(files in {Path(config_dir) / 'launcher'})")
    valid = [f.name for f in fields(LauncherConfig)]
    for arg in overrides:
        key = arg.lstrip("+~").split("=", 1)[0].split(".")
        if len(key) < 2 or key[1] not in valid:
            raise ValueError(f"unknown launcher field in {arg!r}; valid: {', '.join(valid)}")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(f"launcher/{name}", overrides=list(overrides))
    launcher = OmegaConf.to_object(cfg.launcher)
    assert isinstance(launcher, LauncherConfig)
    return launcher


def describe(plan: GridPlan, launcher: LauncherConfig) -> str:
    """A dry run: what :func:`launch` would start, and with which resources."""
    validate_launcher(launcher)
    n_cells = len(plan.cells)
    lines = [f"grid: {len(plan.runs)} runs in {n_cells} cells under {plan.root}; "
             f"{len(plan.runs) - len(plan.pending) - len(plan.active)} finished, "
             f"{len(plan.active)} queued/running from an earlier submission, "
             f"{len(plan.pending)} to run"]
    for p in plan.pending:
        lines.append(f"  {p.run_id}: {', '.join(p.units)}")
    for run_id in plan.active:
        lines.append(f"  {run_id}: already queued or running (skipped)")
    what = [w for w, on in (("CKA between seeds", any(c.cka.enabled for c in plan.cells)),
                            ("the report", any(c.report for c in plan.cells))) if on]
    cell_work = (f"cell-level work ({' and '.join(what)}) for {n_cells} cells"
                 if plan.needs_cell_job else "")
    if not plan.pending and not cell_work:
        lines.append("nothing to submit: every run and cell-level stage is done or in progress")
    elif launcher.backend == "slurm":
        if plan.pending:
            lines.append(f"slurm: 1 array of {len(plan.pending)} tasks (at most "
                         f"{launcher.array_parallelism} at once) with "
                         f"{executor_parameters(launcher, 'runs')}")
        if cell_work:
            dep = "afterany on the array" if plan.pending else "no dependency"
            lines.append(f"slurm: 1 job ({dep}): {cell_work}, with "
                         f"{executor_parameters(launcher, 'cells')}")
        lines.append(f"logs: {submitit_folder(plan.root, launcher)}")
    else:
        w = launcher.local_workers
        lines.append(f"local: {len(plan.pending)} runs, {w} at a time with "
                     f"{max(1, usable_cpus() // w)} torch threads each (unless num_threads is set)"
                     + (f"; then {cell_work}" if cell_work else ""))
    return "\n".join(lines)


def submit(args: Sequence[str], *, dry_run: bool = False,
           config_dir: str = CONFIG_DIR) -> tuple[GridPlan, LauncherConfig, Optional[Submission]]:
    """Compose, plan and (unless ``dry_run``) launch a grid; prints what it does."""
    run_args, name, launcher_args = split_overrides(args)
    launcher = load_launcher(name, launcher_args, config_dir=config_dir)
    plan = plan_grid(expand_grid(run_args, config_dir=config_dir))
    print(describe(plan, launcher), flush=True)
    if dry_run or not (plan.pending or plan.needs_cell_job):
        return plan, launcher, None
    sub = launch(plan, launcher)
    if sub.backend == "slurm":
        ids = ",".join(j for j in (sub.array_job_id, sub.cell_job_id) if j)
        if sub.array_job_id:
            print(f"submitted run array {sub.array_job_id} ({len(sub.run_ids)} tasks)")
        if sub.cell_job_id:
            dep = f" (afterany:{sub.array_job_id})" if sub.array_job_id else ""
            print(f"submitted cell-level job {sub.cell_job_id}{dep}")
        print(f"follow it: landscape-status {plan.root}   |   squeue -j {ids}", flush=True)
    else:
        for r in sub.local:
            print(f"[landscape] {r.run_id}: {r.status}" + (f" ({r.error})" if r.error else ""))
        print(format_status(status_table(plan.root)), flush=True)
    return plan, launcher, sub


def submit_main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``landscape-submit [--dry-run] [overrides...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(__doc__)
        return 0
    dry_run = "--dry-run" in args
    args = [a for a in args if a not in ("--dry-run", "-m", "--multirun")]
    try:
        _, _, sub = submit(args, dry_run=dry_run)
    except SubmissionError as e:
        print(f"landscape-submit: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, HydraException, OmegaConfBaseException) as e:
        print(f"landscape-submit: error: {e}", file=sys.stderr)
        return 2
    if sub is not None and any(r.status == "failed" for r in sub.local):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(submit_main())
