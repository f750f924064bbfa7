"""What is asked of sbatch, and what its refusals mean: a GPU requested for runs told to use
the CPU, the launcher fields behind a refusal (with their values as they are typed), and the
files a refused submission wrote, removed."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from submitit.core.utils import FailedJobError, JobPaths

from landscape.config import RunConfig
from landscape.grid.launcher import LauncherConfig


def idle_gpu_warning(cfgs: Sequence[RunConfig], launcher: LauncherConfig) -> Optional[str]:
    """A warning when every Slurm task gets a GPU that its runs are told not to use
    (``device=cpu``); None when the request and the device agree."""
    if launcher.backend != "slurm" or not launcher.gpus_per_node:
        return None
    if not any(c.device == "cpu" for c in cfgs):
        return None
    return (f"launcher.gpus_per_node={launcher.gpus_per_node} requests a GPU for every task, but "
            f"device=cpu tells the runs to use the CPU; set launcher.gpus_per_node=0 for "
            f"CPU-only jobs, or device=auto (or cuda) to use the GPU")


# sbatch's complaint (slurmctld's words, or the sbatch option it names) -> the launcher fields
# behind it; ``sbatch_extra.<key>`` is an option given through launcher.sbatch_extra
_HINTS = [
    (r"time limit|--time\b", ("time",)),
    (r"memory|--mem\b", ("mem_gb",)),
    (r"processors|\bcpus?\b|--cpus-per-task", ("cpus_per_task",)),
    (r"\bgres\b|\bgpus?\b|--gpus-per-node", ("gpus_per_node",)),
    (r"partition", ("partition",)),
    (r"feature|constraint", ("constraint",)),
    (r"invalid account|\baccount/partition|association", ("account",)),
    (r"\bqos\b", ("sbatch_extra.qos",)),
    (r"node configuration", ("gpus_per_node", "cpus_per_task", "mem_gb", "constraint")),
]
_FALLBACK = ("partition", "account", "sbatch_extra")


def _override_value(value: Any) -> str:
    """A value as it is written after ``launcher.<field>=`` on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _launcher_value(launcher: LauncherConfig, name: str) -> Any:
    """``launcher.<name>``; ``sbatch_extra.<key>`` looks into the extra sbatch options."""
    if name.startswith("sbatch_extra."):
        return launcher.sbatch_extra.get(name.split(".", 1)[1])
    return getattr(launcher, name)


def explain_sbatch_error(message: str, launcher: LauncherConfig, kind: str) -> str:
    """sbatch's message verbatim, then the launcher fields (with their values, as they are
    written on the command line) to change."""
    names = [f for pattern, fs in _HINTS if re.search(pattern, message, re.I) for f in fs]
    if kind == "cells":
        names = ["cell_time" if f == "time" else f for f in names]
    names = list(dict.fromkeys(names)) or list(_FALLBACK)
    values = ", ".join(f"launcher.{f}={_override_value(_launcher_value(launcher, f))}"
                       for f in names)
    what = "run array" if kind == "runs" else "cell-level job"
    return (f"sbatch refused the {what}:\n  " + message.strip().replace("\n", "\n  ")
            + f"\nChange {values} (configs/launcher/slurm.yaml or launcher.<field>=... on the "
            f"command line) to a request this cluster can satisfy.")


_STAGED = re.compile(r"[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh")


def _staged_files(folder: Path) -> set[Path]:
    """What submitit writes into ``folder`` before sbatch answers: the pickled tasks and the
    sbatch script, named by a fresh uuid (an accepted job's are renamed after its id)."""
    if not folder.is_dir():
        return set()
    return {p for p in folder.iterdir() if _STAGED.fullmatch(p.name)}


@contextlib.contextmanager
def clean_if_refused(folder: Path) -> Iterator[None]:
    """Run one sbatch submission; if sbatch refuses it, remove what it wrote (the staged files
    that were not there before, and the folders it created, once empty). submitit repeats
    sbatch's complaint on stderr, which the error carries: that copy is dropped."""
    folder = JobPaths.get_first_id_independent_folder(folder)  # a folder may name the job: %j
    created = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first
    before = _staged_files(folder)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            yield
    except FailedJobError:
        for path in _staged_files(folder) - before:
            path.unlink(missing_ok=True)
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        raise
    sys.stderr.write(err.getvalue())
