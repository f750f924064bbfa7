"""``landscape-submit``: a grid (an experiment's sweeps x the command line's) planned,
checked and launched locally or on Slurm."""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from landscape.cli.compose import CONFIG_DIR, USER_ERRORS, hydra_error_line, to_run_config
from landscape.config import RunConfig
from landscape.grid import (
    GridPlan, LauncherConfig, Submission, SubmissionError, describe, format_status, launch,
    plan_grid, status_table,
)
from landscape.grid.sbatch import idle_gpu_warning
from landscape.grid.slurm import active_jobs

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
        composed: dict[tuple[str, ...], DictConfig] = {}
        out = []
        # Hydra's config repository (not a public API: without it every point is composed)
        repo = getattr(GlobalHydra.instance().config_loader(), "repository", None)
        for combo in combos:
            shape, values = _split_values(parser.parse_overrides(list(combo)), repo)
            if shape not in composed:  # Hydra's composition of the defaults (~0.2-0.4 s)
                composed[shape] = compose(config_name, overrides=list(shape))
            try:  # then Hydra's last step, for plain values: OmegaConf.update(merge=True)
                cfg = copy.deepcopy(composed[shape])
                for key, value in values:
                    OmegaConf.update(cfg, key, value, merge=True)
                out.append(to_run_config(cfg))
            except (OmegaConfBaseException, ValueError, TypeError, KeyError):
                # Hydra's own composition of the whole combination says what is wrong
                out.append(to_run_config(compose(config_name, overrides=list(combo))))
        return out


def _split_values(overrides: Sequence[Override], repo: Any
                  ) -> tuple[tuple[str, ...], list[tuple]]:
    """(the overrides that shape the composition: config groups, ``+``/``~``, hydra.*, lists
    and dicts; the plain ``key=value`` settings of a scalar, as (key, value)). A grid's configs
    differ mostly in the latter (seeds, pool levels, a criterion): one composition per shape,
    then the values set as Hydra sets them, equal to a composition of each (tested).
    ``repo``: Hydra's config repository, which knows the config groups (None: all shape)."""
    shape, values = [], []
    for o in overrides:
        key = o.key_or_group
        plain = (repo is not None and o.type == OverrideType.CHANGE and o.package is None
                 and not key.startswith("hydra") and not repo.group_exists(key)
                 and not repo.group_exists(key.replace(".", "/")))
        value = o.value() if plain else None
        if plain and (value is None or isinstance(value, (bool, int, float, str))):
            values.append((key, value))
        else:
            shape.append(o.input_line)
    return tuple(shape), values


def validate_grid(cfgs: Sequence[RunConfig]) -> None:
    """Every run's settings before anything is planned or written: once per cell and stage
    settings (the seeds of a cell differ in nothing :func:`landscape.pipeline.validate`
    checks but the seed itself and the length of its folder's name), the data on disk once
    per distinct data config."""
    from landscape.data import check_dataset
    from landscape.pipeline import check_seed, validate

    checked, validated = set(), set()
    for c in cfgs:
        check_seed(c.seed)
        same = (repr(dataclasses.replace(c, seed=0)), len(str(c.seed)))
        if same not in validated:
            validate(c, check_data=False)
            validated.add(same)
        key = repr(c.data)
        if key not in checked:
            check_dataset(c.data)
            checked.add(key)


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


def submit(args: Sequence[str], *, dry_run: bool = False,
           config_dir: str = CONFIG_DIR) -> tuple[GridPlan, LauncherConfig, Optional[Submission]]:
    """Compose, plan and (unless ``dry_run``) launch a grid; prints what it does."""
    run_args, name, launcher_args = split_overrides(args)
    launcher = load_launcher(name, launcher_args, config_dir=config_dir)
    cfgs = expand_grid(run_args, config_dir=config_dir)
    validate_grid(cfgs)
    root = Path(cfgs[0].results_root).expanduser().resolve() if cfgs else Path(".")
    plan = plan_grid(cfgs, active_jobs=active_jobs(root))
    print(describe(plan, launcher), flush=True)
    if warning := idle_gpu_warning(cfgs, launcher):
        print(f"landscape-submit: warning: {warning}", file=sys.stderr, flush=True)
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


SUBMIT_HELP = """usage: landscape-submit [--dry-run] [overrides...]

    landscape-submit experiment=paper_cifar10 launcher=slurm launcher.partition=gpu
    landscape-submit experiment=demo launcher=local launcher.local_workers=2
    landscape-submit model=vgg19 model.pool_level=1,2,3,4 seed=0,1,2 launcher=slurm --dry-run

Arguments are Hydra overrides, as for `landscape-run -m`: the grid is the cartesian product of
the experiment's hydra.sweeper.params and the command line's sweeps (a command-line value
replaces the experiment's sweep of the same key). launcher=<name> and launcher.<field>=...
choose and change configs/launcher/<name>.yaml (default: local). On Slurm this returns as soon
as sbatch has answered (one array plus a cell-level job `afterany` on it)."""


def submit_main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``landscape-submit [--dry-run] [overrides...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(SUBMIT_HELP)
        return 0
    dry_run = "--dry-run" in args
    args = [a for a in args if a not in ("--dry-run", "-m", "--multirun")]
    try:
        _, _, sub = submit(args, dry_run=dry_run)
    except SubmissionError as e:
        print(f"landscape-submit: {e}", file=sys.stderr)
        return 1
    except (HydraException, OmegaConfBaseException) as e:
        print(f"landscape-submit: error: {hydra_error_line(e)}", file=sys.stderr)
        return 2
    except (*USER_ERRORS, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"landscape-submit: error: {msg}", file=sys.stderr)
        return 2
    if sub is not None and any(r.status == "failed" for r in sub.local):
        return 1
    return 0
