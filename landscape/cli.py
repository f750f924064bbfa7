"""The console scripts that take Hydra overrides (the only module that imports Hydra).

- ``landscape-run``: one run (cell + seed); with ``-m`` (or an experiment that sets
  ``hydra.mode: MULTIRUN``) a grid, one run after another in this process, then the cell-level
  stages, a summary and the report.
- ``landscape-submit``: the same grid planned and launched locally or on Slurm.
- ``landscape-cells``: cell-level stages (CKA between seeds) of every cell of a results root.
- ``landscape-rf``: the analytic receptive field per pool level.

``landscape-status`` and ``landscape-report`` read a results folder: ``landscape.commands``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from landscape.config import RFSweepConfig, RunConfig, check_known_keys
from landscape.data import DatasetNotFoundError
from landscape.grid import (
    GridPlan, LauncherConfig, Submission, SubmissionError, describe, finish_cells,
    format_status, launch, plan_grid, status_table,
)
from landscape.grid.slurm import active_jobs
from landscape.results import DamagedUnitError, ResultsRootError
from landscape.storage import CheckpointError

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

cs = ConfigStore.instance()
cs.store(name="run_schema", node=RunConfig)
cs.store(name="rf_schema", node=RFSweepConfig)
cs.store(group="launcher", name="schema", node=LauncherConfig)
DEFAULT_LAUNCHER = "local"

log = logging.getLogger("landscape")


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Validate a composed config against the schema and return plain dataclasses."""
    check_known_keys(OmegaConf.to_container(cfg, resolve=False), RunConfig)
    run_cfg = OmegaConf.to_object(cfg)
    if not isinstance(run_cfg, RunConfig):
        raise TypeError(f"expected a RunConfig, got {type(run_cfg).__name__}")
    return run_cfg


USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError, CheckpointError)
# While stages run, only these say what to fix (their unit's FAILED file keeps the traceback);
# anything else is a bug and keeps its traceback.
RUN_ERRORS = (DatasetNotFoundError, CheckpointError, ResultsRootError, DamagedUnitError)


def exit_on_user_error(prog: str, fn: Callable[[], Any], errors: tuple = USER_ERRORS) -> Any:
    """``fn()``; a bad setting (ValueError, an unknown registry name, a missing dataset or
    module, an unusable checkpoint) is printed as one line and exits with status 2 instead of
    a traceback."""
    try:
        return fn()
    except errors as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def run_main(cfg: DictConfig) -> dict[str, Any]:
    from landscape.pipeline import run, validate

    def checked() -> RunConfig:
        run_cfg = to_run_config(cfg)
        validate(run_cfg)  # every setting, before anything is written
        return run_cfg

    run_cfg = exit_on_user_error("landscape-run", checked)
    summary = exit_on_user_error("landscape-run", lambda: run(run_cfg), RUN_ERRORS)
    done = f"ran {', '.join(summary.ran)}" if summary.ran else "already done, nothing to run"
    print(f"[landscape] {summary.run_dir}: {done} (status: {summary.status})", flush=True)
    return {"run_dir": summary.run_dir, "status": summary.status}


@hydra.main(config_path=CONFIG_DIR, config_name="rf", version_base="1.3")
def rf_main(cfg: DictConfig) -> None:
    """Print the analytic receptive field of ``model`` at each pool level for ``data``'s input."""
    from landscape.data import dataset_info
    from landscape.receptive_field import format_sweep_table, rf_sweep_table

    def table() -> tuple[RFSweepConfig, Any, Any]:
        check_known_keys(OmegaConf.to_container(cfg, resolve=False), RFSweepConfig)
        sweep = OmegaConf.to_object(cfg)
        assert isinstance(sweep, RFSweepConfig)
        m, info = sweep.model, dataset_info(sweep.data)
        try:
            return sweep, info, rf_sweep_table(
                m.name, input_size=info.image_size, levels=tuple(sweep.levels), width=m.width,
                num_classes=info.num_classes, in_channels=info.in_channels,
                pool_kernel=m.pool_kernel, pool_stride=m.pool_stride,
                pool_padding=m.pool_padding)
        except ValueError as e:
            raise ValueError(f"model.* / levels={list(sweep.levels)}: {e}") from None

    sweep, info, df = exit_on_user_error("landscape-rf", table)
    m = sweep.model
    print(f"{m.name} (width {m.width:g}) on {sweep.data.name}: {info.image_size}x{info.image_size} "
          f"input, {info.in_channels} channel(s); r_max/r_min at the last conv layer, in pixels")
    print(format_sweep_table(df), flush=True)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def cells_main(cfg: DictConfig) -> None:
    """Cell-level stages (CKA between seeds) for every cell under ``results_root``."""
    from landscape.pipeline import run_cells

    run_cfg = exit_on_user_error("landscape-cells", lambda: to_run_config(cfg))
    root = Path(run_cfg.results_root)
    if not root.is_dir() or not (found := exit_on_user_error(
            "landscape-cells", lambda: run_cells(root, overrides=run_cfg))):
        print(f"landscape-cells: error: no cells under {root.resolve()} (results_root="
              f"{run_cfg.results_root}); nothing to do", file=sys.stderr)
        raise SystemExit(2)
    for s in found:
        what = ", ".join(s.ran) or "nothing to do"
        print(f"[landscape] {s.cell_dir}: seeds {s.seeds}: {what}", flush=True)


def _without_hydra(config: DictConfig) -> RunConfig:
    data = OmegaConf.to_container(config, resolve=False)
    data.pop("hydra", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), data))


class GridSummary(Callback):
    """At the end of a multirun: cell-level stages (CKA between seeds), then print where the
    results are and a per-cell summary, and write the report."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_cfg = _without_hydra(config)
        finish_cells(Path(run_cfg.results_root), overrides=run_cfg)


# ---------------------------------------------------------------------------------------------
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


def validate_grid(cfgs: Sequence[RunConfig]) -> None:
    """Every run's settings before anything is planned or written (the data on disk once per
    distinct data config)."""
    from landscape.data import check_dataset
    from landscape.pipeline import validate

    checked = set()
    for c in cfgs:
        validate(c, check_data=False)
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
    except (*USER_ERRORS, TypeError, HydraException, OmegaConfBaseException) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"landscape-submit: error: {msg}", file=sys.stderr)
        return 2
    if sub is not None and any(r.status == "failed" for r in sub.local):
        return 1
    return 0


if __name__ == "__main__":
    run_main()
