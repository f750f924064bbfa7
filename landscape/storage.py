"""Atomic file writes and checkpoint I/O.

Every file is written to a temporary sibling and moved into place with ``os.replace``, so a
killed process never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or corrupted."""


def atomic_write(path: Path, write: Callable[[Any], None], *, mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask like open()
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def clean_temp(directory: Path) -> None:
    """Remove the temporary files (``.<name>.<random>.tmp``) that a killed :func:`atomic_write`
    left in ``directory``. Only for a folder nobody else is writing in right now (a stage
    unit, or a run's checkpoints, under the unit's lock): a live writer's temp file would go."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a dict of tensors and plain Python values."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", *,
                    run_id: str | None = None, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a clear error for missing or corrupted files,
    and (with ``run_id``) for a checkpoint that records another run (copied by hand).
    ``mmap``: the tensors stay on disk until read (reading a checkpoint's plain values of a
    ResNet-50's last.pt, 189 MB: 0.03 s instead of 0.13 s, median of 7)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for truncated/garbage files
        raise CheckpointError(
            f"checkpoint {path} is corrupted or unreadable ({type(e).__name__}: {e}). "
            f"Delete it to recompute it (a run then resumes from its previous checkpoint or restarts)."
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (got {type(state).__name__})")
    if run_id is not None and state.get("run_id", run_id) != run_id:
        raise CheckpointError(
            f"checkpoint {path} belongs to run {state['run_id']}, not to {run_id} (copied from "
            f"another run or cell?). Delete it to recompute it.")
    return state
