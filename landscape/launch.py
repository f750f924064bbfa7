"""Run a grid: one Slurm array (one task per unfinished run) plus a dependent cell-level job,
through submitit; or the same grid on this machine with N worker processes.

Hydra-free: callers pass a list of :class:`RunConfig` and a :class:`LauncherConfig`
(``landscape.submit_cli`` builds both from the Hydra config tree). What is finished is skipped
*before* submission: a run is finished when every enabled stage unit has its DONE marker (or
its training diverged, after which no later stage can run), and a run still queued or running
from an earlier submission is not submitted twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional, Sequence

import submitit
import torch
from submitit.core.utils import FailedJobError
from submitit.helpers import Checkpointable, DelayedSubmission

from landscape.config import RunConfig
from landscape.pipeline import CellSummary, RunSummary, run
from landscape.runs import run_paths
from landscape.status import active_jobs, pending_units, record_submission, stale_cell_units

log = logging.getLogger("landscape")
BACKENDS = ("local", "slurm")


@dataclass
class LauncherConfig:
    """Where and how a grid runs (``configs/launcher/{local,slurm}.yaml``). Slurm fields are
    per array task (= one run); ``time`` and ``cell_time`` are minutes."""

    backend: str = "local"  # "local" | "slurm"
    partition: Optional[str] = None
    account: Optional[str] = None
    time: int = 1440
    gpus_per_node: Optional[int] = 1  # None (or 0): a CPU-only job
    cpus_per_task: int = 8
    mem_gb: Optional[float] = None  # None: the cluster's default memory per CPU
    constraint: Optional[str] = None
    array_parallelism: int = 64  # array tasks running at once
    max_num_timeout: int = 3  # requeues after a time-out (preemptions do not count)
    sbatch_extra: dict[str, Any] = field(default_factory=dict)  # {"qos": "high"} -> --qos=high
    setup: list[str] = field(default_factory=list)  # shell lines run first (module load ...)
    cell_time: int = 120  # the cell-level job (CKA between seeds, summary, report)
    job_name: str = "landscape"
    folder: Optional[str] = None  # submitit logs and pickles; None: <results_root>/.submitit
    local_workers: int = 1  # backend=local: runs in parallel, threads = cores // local_workers


def validate_launcher(lc: LauncherConfig) -> None:
    """Raise ValueError naming the launcher field of an impossible setting."""
    if lc.backend not in BACKENDS:
        raise ValueError(f"launcher.backend must be one of {BACKENDS}, got {lc.backend!r}")
    for name in ("time", "cell_time", "cpus_per_task", "array_parallelism", "local_workers"):
        if getattr(lc, name) < 1:
            raise ValueError(f"launcher.{name} must be >= 1, got {getattr(lc, name)}")
    if lc.gpus_per_node is not None and lc.gpus_per_node < 0:
        raise ValueError(f"launcher.gpus_per_node must be >= 0 or null, got {lc.gpus_per_node}")
    if lc.mem_gb is not None and not lc.mem_gb > 0:
        raise ValueError(f"launcher.mem_gb must be > 0 or null, got {lc.mem_gb}")
    if lc.max_num_timeout < 0:
        raise ValueError(f"launcher.max_num_timeout must be >= 0, got {lc.max_num_timeout}")


# ---------------------------------------------------------------------------------------------
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
        wanted = any(c.cka.enabled or c.report for c in self.cells)
        return wanted and bool(self.pending or self.stale_cells)


def plan_grid(cfgs: Sequence[RunConfig], *, skip_active: bool = True) -> GridPlan:
    """Resolve ``results_root`` to an absolute path, drop duplicate runs, find what is left."""
    if not cfgs:
        raise ValueError("the grid is empty: no run configs were given")
    cfgs = [dataclasses.replace(c, results_root=str(Path(c.results_root).expanduser().resolve()))
            for c in cfgs]
    roots = sorted({c.results_root for c in cfgs})
    if len(roots) > 1:
        raise ValueError(f"a grid must share one results_root, got {roots}")
    root = Path(roots[0])
    runs = list({run_paths(c).run_id: c for c in cfgs}.values())
    active = set(active_jobs(root)) if skip_active else set()
    pending, skipped = [], []
    for c in runs:
        run_id, units = run_paths(c).run_id, pending_units(c)
        if units and run_id in active:
            skipped.append(run_id)
        elif units:
            pending.append(PendingRun(c, run_id, tuple(units)))
    cells: dict[str, RunConfig] = {}
    for c in sorted(runs, key=lambda c: c.seed):
        cells.setdefault(run_paths(c).cell.name, c)
    stale = tuple(name for name, c in cells.items() if stale_cell_units(c))
    return GridPlan(root, tuple(runs), tuple(pending), tuple(skipped), tuple(cells.values()), stale)


# ---------------------------------------------------------------------------------------------
def _log_to_stdout() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _slurm_threads(cfg: RunConfig) -> RunConfig:
    """Inside a Slurm job: one torch thread per allocated CPU unless num_threads is set."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cfg.num_threads is None and cpus:
        return dataclasses.replace(cfg, num_threads=int(cpus))
    return cfg


class RunTask(Checkpointable):
    """One run as a Slurm array task. On preemption or time-out submitit calls
    :meth:`checkpoint` and requeues the task; the requeued task skips finished stages and
    resumes training from ``checkpoints/last.pt`` (the state lives on disk, not in ``self``)."""

    def __call__(self, cfg: RunConfig) -> RunSummary:
        _log_to_stdout()
        return run(_slurm_threads(cfg))

    def checkpoint(self, cfg: RunConfig) -> DelayedSubmission:
        return DelayedSubmission(RunTask(), cfg)


class CellTask(Checkpointable):
    """The cell-level stages (CKA between the seeds that finished) of every cell of a grid,
    the final-accuracy summary of the grid (printed to the job's log), then, if
    ``report`` is set, the report of everything under ``results_root`` (landscape-report)."""

    def __call__(self, cells: list[RunConfig]) -> list[CellSummary]:
        from landscape.summary import finish_grid

        _log_to_stdout()
        cfg = _slurm_threads(cells[0])
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        done, failed = finish_grid(run_paths(cfg).root, cfg, [run_paths(c).cell for c in cells])
        if failed:
            raise RuntimeError(f"cell-level stages failed for {failed} (tracebacks above)")
        return done


# ---------------------------------------------------------------------------------------------
class SubmissionError(RuntimeError):
    """sbatch refused a job; the message has sbatch's words and the config field to change."""


@dataclass(frozen=True)
class LocalRunResult:
    run_id: str
    status: str  # RunSummary.status, or "failed"
    error: str  # last line of the exception, "" if none
    threads: int  # torch threads the run used
    pid: int


@dataclass(frozen=True)
class Submission:
    """What was started. ``jobs`` are submitit job handles (array tasks, then the cell job)."""

    backend: str
    run_ids: tuple[str, ...]
    array_job_id: Optional[str] = None
    cell_job_id: Optional[str] = None
    jobs: tuple[Any, ...] = ()
    local: tuple[LocalRunResult, ...] = ()
    cells: tuple[CellSummary, ...] = ()


def submitit_folder(root: Path, launcher: LauncherConfig) -> Path:
    """Where submitit keeps job scripts, pickles and logs (``<id>_<task>_log.out/err``)."""
    return Path(launcher.folder).expanduser().resolve() if launcher.folder else root / ".submitit"


def executor_parameters(launcher: LauncherConfig, kind: str) -> dict[str, Any]:
    """AutoExecutor parameters of the run array (``kind="runs"``) or the cell job."""
    params = {
        "name": f"{launcher.job_name}-{kind}",
        "timeout_min": launcher.time if kind == "runs" else launcher.cell_time,
        "cpus_per_task": launcher.cpus_per_task, "gpus_per_node": launcher.gpus_per_node or None,
        "mem_gb": launcher.mem_gb, "slurm_partition": launcher.partition,
        "slurm_account": launcher.account, "slurm_constraint": launcher.constraint,
        "slurm_array_parallelism": launcher.array_parallelism if kind == "runs" else None,
        "slurm_additional_parameters": dict(launcher.sbatch_extra) or None,
        "slurm_setup": list(launcher.setup) or None,
    }
    return {k: v for k, v in params.items() if v is not None}


# sbatch's complaint -> the launcher fields that cause it
_HINTS = [
    (r"time limit", ("time",)), (r"memory", ("mem_gb",)),
    (r"processors|cpu", ("cpus_per_task",)), (r"gres|gpu", ("gpus_per_node",)),
    (r"partition", ("partition",)), (r"feature|constraint", ("constraint",)),
    (r"account|association", ("account",)), (r"qos", ("sbatch_extra",)),
    (r"node configuration", ("gpus_per_node", "cpus_per_task", "mem_gb", "constraint")),
]


def explain_sbatch_error(message: str, launcher: LauncherConfig, kind: str) -> str:
    """sbatch's message verbatim, then the launcher fields (with their values) to change."""
    fields_ = [f for pattern, fs in _HINTS if re.search(pattern, message, re.I) for f in fs]
    if kind == "cells":
        fields_ = ["cell_time" if f == "time" else f for f in fields_]
    fields_ = list(dict.fromkeys(fields_)) or ["partition", "account", "sbatch_extra"]
    values = ", ".join(f"launcher.{f}={getattr(launcher, f)!r}" for f in fields_)
    what = "run array" if kind == "runs" else "cell-level job"
    return (f"sbatch refused the {what}:\n  " + message.strip().replace("\n", "\n  ")
            + f"\nChange {values} (configs/launcher/slurm.yaml or launcher.<field>=... on the "
            f"command line) to a request this cluster can satisfy.")


def _executor(launcher: LauncherConfig, folder: Path, kind: str,
              **extra: Any) -> submitit.AutoExecutor:
    try:
        ex = submitit.AutoExecutor(folder, cluster="slurm",
                                   slurm_max_num_timeout=launcher.max_num_timeout)
    except RuntimeError as e:
        raise SubmissionError(f"launcher.backend=slurm but no Slurm here ({e}); submit from "
                              f"the cluster's login node, or use launcher=local") from None
    ex.update_parameters(**executor_parameters(launcher, kind), **extra)
    return ex


def submit_slurm(plan: GridPlan, launcher: LauncherConfig) -> Submission:
    """Submit the pending runs as one array, then the cell job ``afterany`` on it.

    Returns as soon as sbatch has answered; the jobs do not need this process."""
    folder = submitit_folder(plan.root, launcher)
    jobs: list[Any] = []
    array_id = cell_id = None
    kind = "runs"
    try:
        if plan.pending:
            jobs += _executor(launcher, folder, "runs").map_array(
                RunTask(), [p.cfg for p in plan.pending])
            array_id = jobs[0].job_id.split("_")[0]
        if plan.needs_cell_job:
            kind = "cells"
            dep = {"slurm_dependency": f"afterany:{array_id}"} if array_id else {}
            ex = _executor(launcher, folder, "cells", **dep)
            jobs.append(ex.submit(CellTask(), list(plan.cells)))
            cell_id = jobs[-1].job_id
    except FailedJobError as e:
        msg = explain_sbatch_error(str(e), launcher, kind)
        if array_id:
            msg += (f"\n(The run array {array_id} was submitted; resubmitting adds only the "
                    f"cell job.)")
        raise SubmissionError(msg) from None
    finally:
        if array_id or cell_id:
            run_jobs = jobs[:len(plan.pending)] if array_id else []
            cells = [run_paths(c).cell.name for c in plan.cells] if cell_id else []
            record_submission(plan.root, "slurm", [(p.run_id, j.job_id, asdict(p.cfg))
                                                   for p, j in zip(plan.pending, run_jobs)],
                              cell_id, cells)
    run_ids = tuple(p.run_id for p in plan.pending)
    return Submission("slurm", run_ids, array_id, cell_id, tuple(jobs))


# ---------------------------------------------------------------------------------------------
def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_isolated(cfg: RunConfig) -> LocalRunResult:
    """One run in a worker process; a failure is returned (the pipeline wrote FAILED), so one
    bad run does not stop the others."""
    run_id = run_paths(cfg).run_id
    try:
        status, error = run(cfg).status, ""
    except Exception as e:  # noqa: BLE001 - reported per run, traceback is in FAILED
        status, error = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
        log.error("%s failed: %s", run_id, error)
    return LocalRunResult(run_id, status, error, torch.get_num_threads(), os.getpid())


def run_local(plan: GridPlan, launcher: LauncherConfig) -> Submission:
    """Run the pending runs here: one after another in this process (``local_workers=1``), or
    in ``local_workers`` spawned processes, each with ``usable_cpus() // local_workers`` torch
    threads (runs that set ``num_threads`` keep it). Then :class:`CellTask`, in this process.
    """
    workers = launcher.local_workers
    threads = max(1, usable_cpus() // workers)
    cfgs = [p.cfg if p.cfg.num_threads else dataclasses.replace(p.cfg, num_threads=threads)
            for p in plan.pending]
    if cfgs:
        record_submission(plan.root, "local",
                          [(run_paths(c).run_id, None, asdict(c)) for c in cfgs])
    previous = torch.get_num_threads()
    try:
        if workers == 1 or len(cfgs) <= 1:
            done = [_run_isolated(c) for c in cfgs]
        else:
            # A fresh process per run (Python >= 3.11): no CUDA context or backend flags
            # leak from one run into the next.
            fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), **fresh) as pool:
                futures = [pool.submit(_run_isolated, c) for c in cfgs]
                done = [f.result() for f in as_completed(futures)]
        torch.set_num_threads(usable_cpus())
        cells = CellTask()(list(plan.cells)) if plan.needs_cell_job else []
    finally:
        torch.set_num_threads(previous)
    order = {run_paths(c).run_id: i for i, c in enumerate(cfgs)}
    done.sort(key=lambda r: order[r.run_id])
    return Submission("local", tuple(order), local=tuple(done), cells=tuple(cells))


def launch(plan: GridPlan, launcher: LauncherConfig) -> Submission:
    """Start what ``plan`` says is left, with the backend ``launcher.backend``."""
    validate_launcher(launcher)
    return (submit_slurm if launcher.backend == "slurm" else run_local)(plan, launcher)
