"""The local backend: the pending runs of a grid on this machine, one after another or in N
worker processes (a fresh one per run) with the CPU threads split between them; then the
cell-level work."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import select
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from multiprocessing import Manager, get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from typing import Callable, Optional

import torch

from landscape import results
from landscape.config import RunConfig
from landscape.grid.finish import finish_cells
from landscape.grid.gpu import (
    check_gpu_memory, free_memory, gpu_slots, run_on_a_slot, visible_gpus, with_threads,
)
from landscape.grid.launcher import (
    BACKENDS, LauncherConfig, LocalRunResult, Submission, SubmissionError, cell_work,
)
from landscape.grid.plan import GridPlan
from landscape.grid.variants import Task, run_variants
from landscape.identity import identify

log = logging.getLogger("landscape")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _die_with_launcher(launcher: int) -> None:
    """Worker initializer (Linux): SIGTERM this worker when the launcher (pid ``launcher``)
    dies, however it dies (SIGKILL included), so no run goes on orphaned; an interrupted run
    resumes from its last epoch checkpoint when the grid is started again. A spawned worker
    is the launcher's child (``PR_SET_PDEATHSIG``); a forkserver's worker is not, so a daemon
    thread also waits on a pidfd of the launcher."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG: the parent's death
    except (OSError, AttributeError):  # not Linux: no such guarantee
        return
    try:
        fd = os.pidfd_open(launcher)
    except ProcessLookupError:  # the launcher died before this worker started
        os._exit(1)
    except (AttributeError, OSError):  # Linux < 5.3: the parent's death only
        return

    def watch() -> None:
        select.select([fd], [], [])  # readable once the launcher has exited
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-launcher", daemon=True).start()


def _run_isolated(task: tuple[RunConfig, ...]) -> LocalRunResult:
    """One run (its variants, one after another) in a worker process; a failure is returned
    (the pipeline wrote FAILED), so one bad run does not stop the others."""
    run_id = identify(task[0]).run_id
    try:
        status, error = run_variants(task).status, ""
    except Exception as e:  # noqa: BLE001 - reported per run, traceback is in FAILED
        status, error = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
        log.error("%s failed: %s", run_id, error)
    return LocalRunResult(run_id, status, error, torch.get_num_threads(), os.getpid())


def _gpu_packing(launcher: LauncherConfig) -> Optional[list[int]]:
    """The visible GPUs when ``launcher.runs_per_gpu > 1`` (None when it is 1)."""
    if launcher.runs_per_gpu == 1:
        return None
    gpus = visible_gpus()
    if not gpus:
        raise SubmissionError(f"launcher.runs_per_gpu={launcher.runs_per_gpu} shares CUDA GPUs "
                              "between runs, and none is visible here; set it to 1 (and "
                              "launcher.local_workers for parallel CPU runs)")
    return gpus


class LocalBackend:
    def describe(self, plan: GridPlan, launcher: LauncherConfig) -> list[str]:
        gpus, work = _gpu_packing(launcher), cell_work(plan)
        w = len(gpus) * launcher.runs_per_gpu if gpus else launcher.local_workers
        per_gpu = (f" ({launcher.runs_per_gpu} per GPU on {len(gpus)} GPUs)" if gpus else "")
        chosen = sorted({r.num_threads for r in plan.runs if r.num_threads})  # set by the user
        threads = (f"{'/'.join(map(str, chosen))} torch thread(s) each (num_threads)" if chosen
                   else f"{max(1, usable_cpus() // w)} torch threads each")
        return [f"local: {len(plan.pending)} runs, {w} at a time{per_gpu} with {threads}"
                + (f"; then {work}" if work else "")]

    def launch(self, plan: GridPlan, launcher: LauncherConfig) -> Submission:
        """Run the pending runs here: in this process (``local_workers=1``), or in
        ``local_workers`` spawned processes, each with ``usable_cpus() // local_workers`` torch
        threads (runs that set ``num_threads`` keep it); then the cell-level work, here."""
        gpus = _gpu_packing(launcher)
        workers = len(gpus) * launcher.runs_per_gpu if gpus else launcher.local_workers
        threads = max(1, usable_cpus() // workers)
        tasks = [tuple(with_threads(p.variants, threads)) for p in plan.pending]
        cfgs = [t[0] for t in tasks]  # what each run trains with
        if gpus and cfgs:  # before anything is recorded or started
            check_gpu_memory(cfgs, launcher.runs_per_gpu, free_memory(gpus))
        if cfgs:
            results.record_submission(plan.root, "local", [
                (identify(c).run_id, None, dataclasses.asdict(c)) for t in tasks for c in t])
        previous = torch.get_num_threads()
        try:
            if gpus and cfgs:
                done = _run_on_gpus(tasks, gpu_slots(gpus, launcher.runs_per_gpu))
            elif workers == 1 or len(cfgs) <= 1:
                done = [_run_isolated(t) for t in tasks]
            else:
                done = _in_processes(_run_isolated, tasks, workers, _cpu_context(cfgs))
            torch.set_num_threads(usable_cpus())
            cells = finish_cells(plan.root, list(plan.cells)) if plan.needs_cell_job else []
        finally:
            torch.set_num_threads(previous)
        order = {identify(c).run_id: i for i, c in enumerate(cfgs)}
        done.sort(key=lambda r: order[r.run_id])
        return Submission("local", tuple(order), local=tuple(done), cells=tuple(cells))


def _cpu_context(cfgs: list[RunConfig]) -> BaseContext:
    """Where no run can touch CUDA (every device ``cpu``, or none visible): ``forkserver``
    with landscape imported once in the server, so each run's fresh process is a fork of it
    (no 10-15 s of imports per run); else ``spawn``, which starts CUDA in a clean process."""
    if "forkserver" in get_all_start_methods() and (
            all(c.device == "cpu" for c in cfgs) or not torch.cuda.is_available()):
        context = get_context("forkserver")
        context.set_forkserver_preload([__name__])  # this module imports the pipeline
        return context
    return get_context("spawn")


def _in_processes(fn: Callable[[Task], LocalRunResult], tasks: list[Task],
                  workers: int, context: BaseContext | None = None) -> list[LocalRunResult]:
    """``fn(task)`` of every run in ``workers`` processes (``spawn`` unless ``context``)
    that die with this one, a fresh process per run (Python >= 3.11): no CUDA context or
    backend flags leak from one run into the next."""
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with ProcessPoolExecutor(workers, mp_context=context or get_context("spawn"),
                             initializer=_die_with_launcher, initargs=(os.getpid(),),
                             **fresh) as pool:
        return [f.result() for f in as_completed([pool.submit(fn, t) for t in tasks])]


def _run_on_gpus(tasks: list[Task], slots: list[str]) -> list[LocalRunResult]:
    """The runs in ``len(slots)`` processes, each pinned (CUDA_VISIBLE_DEVICES) to the GPU of
    the slot it holds while it runs: at most ``runs_per_gpu`` on a GPU at once."""
    with Manager() as manager:
        free = manager.Queue()
        for s in slots:
            free.put(s)
        return _in_processes(partial(run_on_a_slot, free, _run_isolated), tasks, len(slots))


BACKENDS.register("local")(LocalBackend())
