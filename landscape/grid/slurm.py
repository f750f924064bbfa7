"""The Slurm backend: one array (one task per unfinished run) plus a cell-level job that waits
for it (``afterany``), through submitit; and what the queue says of recorded submissions.

A preempted or timed-out task is requeued by submitit (:class:`RunTask` is Checkpointable) and
resumes from ``checkpoints/last.pt``; the state lives on disk, not in the task object.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterable

import submitit
import torch
from submitit.core.utils import FailedJobError
from submitit.helpers import Checkpointable, DelayedSubmission

from landscape import results
from landscape.config import RunConfig
from landscape.grid.finish import finish_cells
from landscape.grid.gpu import check_gpu_memory, free_memory, groups, with_threads
from landscape.grid.launcher import (
    BACKENDS, LauncherConfig, Submission, SubmissionError, cell_work,
)
from landscape.grid.plan import GridPlan
from landscape.grid.sbatch import clean_if_refused, explain_sbatch_error
from landscape.grid.variants import Task, run_variants, variants_of
from landscape.pipeline import CellSummary, RunSummary

log = logging.getLogger("landscape")
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}


def _log_to_stdout() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _slurm_threads(cfg: RunConfig) -> RunConfig:
    """Inside a Slurm job: one torch thread per allocated CPU unless num_threads is set."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cfg.num_threads is None and cpus:
        return dataclasses.replace(cfg, num_threads=int(cpus))
    return cfg


class RunTask(Checkpointable):
    """One run (its variants, one after another: ``landscape.grid.variants``) as a Slurm
    array task; requeued on preemption or time-out."""

    def __call__(self, task: Task) -> RunSummary:
        _log_to_stdout()
        return run_variants([_slurm_threads(c) for c in variants_of(task)])

    def checkpoint(self, task: Task) -> DelayedSubmission:
        return DelayedSubmission(RunTask(), task)


class GroupTask(Checkpointable):
    """``launcher.runs_per_gpu`` runs as one array task, in as many processes sharing the
    task's GPU (the CPUs split between them); requeued as a group, each run resumes from its
    own checkpoint. Their GPU memory is checked first (a clear error, nothing started)."""

    def __call__(self, tasks: list[Task]) -> list[RunSummary]:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        _log_to_stdout()
        runs = [variants_of(t) for t in tasks]
        if torch.cuda.is_available():
            check_gpu_memory([v[0] for v in runs], len(runs), free_memory([0]))
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
        runs = [tuple(with_threads(v, max(1, cpus // len(runs)))) for v in runs]
        with ProcessPoolExecutor(len(runs), mp_context=get_context("spawn")) as pool:
            return list(pool.map(run_variants, runs))

    def checkpoint(self, tasks: list[Task]) -> DelayedSubmission:
        return DelayedSubmission(GroupTask(), tasks)


def _array_tasks(plan: GridPlan, launcher: LauncherConfig) -> tuple[Any, list]:
    """The task callable and its arguments: one run (its variants) per task, or
    (``runs_per_gpu`` = k > 1) groups of k runs."""
    tasks = [p.variants for p in plan.pending]
    if launcher.runs_per_gpu == 1:
        return RunTask(), tasks
    if launcher.gpus_per_node != 1:
        raise SubmissionError(f"launcher.runs_per_gpu={launcher.runs_per_gpu} packs runs on the "
                              f"one GPU of each array task; set launcher.gpus_per_node=1 (now "
                              f"{launcher.gpus_per_node})")
    return GroupTask(), groups(tasks, launcher.runs_per_gpu)


class CellTask(Checkpointable):
    """The cell-level stages of every cell of a grid over the seeds that finished, the grid's
    summary (printed to the job's log), then the report if ``report`` is set."""

    def __call__(self, cells: list[RunConfig]) -> list[CellSummary]:
        _log_to_stdout()
        cfg = _slurm_threads(cells[0])
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        return finish_cells(Path(cfg.results_root), cells)


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


class SlurmBackend:
    def describe(self, plan: GridPlan, launcher: LauncherConfig) -> list[str]:
        lines, work = [], cell_work(plan)
        if plan.pending:
            _, tasks = _array_tasks(plan, launcher)
            k = launcher.runs_per_gpu
            runs = f" for {len(plan.pending)} runs" if k > 1 else ""
            packing = f", {k} runs per task sharing its GPU" if k > 1 else ""
            lines.append(f"slurm: 1 array of {len(tasks)} tasks{runs} "
                         f"(at most {launcher.array_parallelism} at once{packing}) with "
                         f"{executor_parameters(launcher, 'runs')}")
        if work:
            dep = "afterany on the array" if plan.pending else "no dependency"
            lines.append(f"slurm: 1 job ({dep}): {work}, with "
                         f"{executor_parameters(launcher, 'cells')}")
        lines.append(f"logs: {submitit_folder(plan.root, launcher)}")
        return lines

    def launch(self, plan: GridPlan, launcher: LauncherConfig) -> Submission:
        """Submit the pending runs as one array, then the cell job ``afterany`` on it."""
        folder = submitit_folder(plan.root, launcher)
        task, args = _array_tasks(plan, launcher) if plan.pending else (None, [])
        jobs: list[Any] = []
        array_id = cell_id = None
        kind = "runs"
        try:
            if plan.pending:
                with clean_if_refused(folder):
                    jobs += _executor(launcher, folder, "runs").map_array(task, args)
                array_id = jobs[0].job_id.split("_")[0]
            if plan.needs_cell_job:
                kind = "cells"
                dep = {"slurm_dependency": f"afterany:{array_id}"} if array_id else {}
                with clean_if_refused(folder):
                    ex = _executor(launcher, folder, "cells", **dep)
                    jobs.append(ex.submit(CellTask(), list(plan.cells)))
                cell_id = jobs[-1].job_id
        except FailedJobError as e:
            msg = explain_sbatch_error(str(e), launcher, kind)
            if array_id:
                msg += (f"\n(The run array {array_id} was submitted; resubmitting adds only "
                        f"the cell job.)")
            raise SubmissionError(msg) from None
        finally:
            if array_id or cell_id:
                run_jobs = jobs[:len(args)] if array_id else []
                if launcher.runs_per_gpu > 1:  # every run of a group: its task's job id
                    run_jobs = [j for j, g in zip(run_jobs, args) for _ in g]
                results.record_submission(
                    plan.root, "slurm", [(p.run_id, j.job_id, dataclasses.asdict(c))
                                         for p, j in zip(plan.pending, run_jobs)
                                         for c in p.variants],
                    cell_id, plan.cell_names() if cell_id else [])
        run_ids = tuple(p.run_id for p in plan.pending)
        return Submission("slurm", run_ids, array_id, cell_id, tuple(jobs))


BACKENDS.register("slurm")(SlurmBackend())


# ---------------------------------------------------------------------------------------------
def squeue_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Slurm state of the queued/running jobs among ``job_ids`` (array tasks as
    ``"<array id>_<index>"``). Empty when Slurm cannot be asked (no squeue here, or the
    controller does not answer), with a warning for the latter."""
    ids = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return {}
    except (OSError, subprocess.TimeoutExpired) as e:
        warnings.warn(f"cannot read the Slurm queue ({e}); states come from files only",
                      stacklevel=2)
        return {}
    if out.returncode != 0:
        if "Invalid job id" not in out.stderr:  # that one just means: none is queued any more
            warnings.warn(f"squeue failed: {out.stderr.strip()}", stacklevel=2)
        return {}
    return dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)


def active_jobs(root: Path) -> dict[str, str]:
    """run_id (or cell name) -> Slurm state, for runs/cells that a queued or running job of a
    recorded submission holds; a later submission wins."""
    subs = [s for s in results.read_submissions(root) if s.get("backend") == "slurm"]
    states = squeue_states([r.get("job_id") for s in subs for r in s["runs"]]
                           + [s.get("cell_job_id") for s in subs])
    active: dict[str, str] = {}
    for s in subs:
        active.update({r["run_id"]: states[r.get("job_id")] for r in s["runs"]
                       if r.get("job_id") in states})
        if s.get("cell_job_id") in states:
            active.update({c: states[s["cell_job_id"]] for c in s.get("cells", [])})
    return active
