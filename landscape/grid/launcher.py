"""One launcher interface over the backends that run a grid (open_lth's ``platforms`` is the
model): a backend describes what it would start (a dry run) and starts it. ``local`` runs the
pending runs on this machine, N at a time; ``slurm`` submits one array plus a dependent
cell-level job through submitit and returns as soon as sbatch has answered.

Hydra-free: callers pass a :class:`~landscape.grid.plan.GridPlan` and a
:class:`LauncherConfig` (``landscape.cli`` builds both from the Hydra config tree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from landscape.grid.plan import GridPlan
from landscape.pipeline import CellSummary
from landscape.registry import Registry


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
    # Runs sharing one GPU (separate processes), for models too small to fill one. local: k
    # processes per visible GPU (local_workers is then ignored); slurm: each array task runs
    # k runs on its gpus_per_node=1 GPU, cpus_per_task split between them. The GPU memory of
    # k runs (estimated) is checked before they start.
    runs_per_gpu: int = 1


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


class SubmissionError(RuntimeError):
    """The backend refused the grid; the message says why and which launcher field to change."""


class Backend(Protocol):
    def describe(self, plan: GridPlan, launcher: LauncherConfig) -> list[str]:
        """Lines saying what :meth:`launch` would start, and with which resources."""

    def launch(self, plan: GridPlan, launcher: LauncherConfig) -> Submission:
        """Start the pending runs and, if due, the cell-level work."""


BACKENDS: Registry[Backend] = Registry("launcher backend")


def validate_launcher(lc: LauncherConfig) -> None:
    """Raise ValueError naming the launcher field of an impossible setting."""
    if lc.backend not in BACKENDS:
        raise ValueError(f"launcher.backend must be one of {tuple(BACKENDS.names())}, "
                         f"got {lc.backend!r}")
    for name in ("time", "cell_time", "cpus_per_task", "array_parallelism", "local_workers",
                 "runs_per_gpu"):
        if getattr(lc, name) < 1:
            raise ValueError(f"launcher.{name} must be >= 1, got {getattr(lc, name)}")
    if lc.gpus_per_node is not None and lc.gpus_per_node < 0:
        raise ValueError(f"launcher.gpus_per_node must be >= 0 or null, got {lc.gpus_per_node}")
    if lc.mem_gb is not None and not lc.mem_gb > 0:
        raise ValueError(f"launcher.mem_gb must be > 0 or null, got {lc.mem_gb}")
    if lc.max_num_timeout < 0:
        raise ValueError(f"launcher.max_num_timeout must be >= 0, got {lc.max_num_timeout}")


def describe(plan: GridPlan, launcher: LauncherConfig) -> str:
    """A dry run: what :func:`launch` would start, and with which resources."""
    validate_launcher(launcher)
    lines = [f"grid: {len(plan.runs)} runs in {len(plan.cell_names())} cells under "
             f"{plan.root}; {len(plan.runs) - len(plan.pending) - len(plan.active)} finished, "
             f"{len(plan.active)} queued/running from an earlier submission, "
             f"{len(plan.pending)} to run"]
    lines += [f"  {p.run_id}: {', '.join(p.units)}"
              + (f" ({len(p.variants)} settings, one after another)" if len(p.variants) > 1
                 else "") for p in plan.pending]
    lines += [f"  {run_id}: already queued or running (skipped)" for run_id in plan.active]
    if not plan.pending and not plan.needs_cell_job:
        lines.append("nothing to submit: every run and cell-level stage is done or in progress")
    else:
        lines += BACKENDS.get(launcher.backend).describe(plan, launcher)
    return "\n".join(lines)


def cell_work(plan: GridPlan) -> str:
    """What the cell-level job does, in words ("" when no cell-level work is due)."""
    if not plan.needs_cell_job:
        return ""
    from landscape.pipeline import stage_units

    what = list(dict.fromkeys(u.name for c in plan.cells
                              for _, _, u in stage_units(c, "cell", needs_trained=True)))
    what += ["the report"] if any(c.report for c in plan.cells) else []
    return f"cell-level work ({', '.join(what)}) for {len(plan.cell_names())} cells"


def launch(plan: GridPlan, launcher: LauncherConfig) -> Submission:
    """Start what ``plan`` says is left, with the backend ``launcher.backend``."""
    validate_launcher(launcher)
    return BACKENDS.get(launcher.backend).launch(plan, launcher)
