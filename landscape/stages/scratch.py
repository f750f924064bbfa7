"""A unit's scratch folder: what a long unit saves on the way, so that after a preemption, a
time limit or a kill the unit goes on instead of starting again.

The folder (``checkpoints/<stage>/<unit>/``) records the start it belongs to (:data:`START`:
a digest of the network and the settings); :func:`go_on` keeps it for the same start and
empties it for another; :func:`finish` removes it when the unit returned. Masked trainings
keep their trainer's checkpoints there (:mod:`landscape.stages.masked_training`), the
fine-tune unit its epochs, the Hessian, probes, slice, sharpness and connectivity units and
the prune / fine-tune units' measurements a :class:`FolderJournal` (:func:`unit_progress`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional
from urllib.parse import quote

import torch

from landscape.journal import state_digest
from landscape.results.store import jsonable, settings_changes
from landscape.storage import (
    CheckpointError, atomic_write_json, clean_temp, load_checkpoint, save_checkpoint,
)

log = logging.getLogger(__name__)
START = "start.json"  # the scratch folder's record of the start it belongs to
LAST = "last.pt"  # a training's latest state
SECONDS = "seconds.json"  # a FolderJournal's computing time so far
SAVE_EVERY_S = 60.0  # FolderJournal: seconds between two writes of what was put


def go_on(work: Path, start: dict, needed: Optional[str] = LAST) -> bool:
    """Whether the scratch folder ``work`` belongs to ``start`` (what :data:`START` records)
    and holds the file ``needed`` (None: anything it holds) to go on from; if not, it is
    emptied and records ``start`` (a kill before anything was saved then starts again)."""
    if _recorded_start(work) == start and (needed is None or (work / needed).exists()):
        clean_temp(work)
        return True
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    atomic_write_json(work / START, start)
    return False


def finish(work: Path) -> None:
    """Remove the scratch folder ``work`` of a unit that returned, and the folders above it
    (``checkpoints/retrain``, ``checkpoints/finetune``, a cell's ``cell/checkpoints``, ...)
    that are then empty."""
    shutil.rmtree(work, ignore_errors=True)
    for folder in (work.parent, work.parent.parent):
        try:
            folder.rmdir()
        except OSError:  # other units' folders, round checkpoints, a run's init.pt...
            return


@contextlib.contextmanager
def unit_progress(ctx: Any, stage: Any, unit: str, config: Any,
                  models: torch.nn.Module | Mapping[Any, torch.nn.Module],
                  folder: Optional[Path] = None) -> Iterator["FolderJournal"]:
    """The saved progress of the unit ``unit`` of ``stage`` (a Stage): a
    :class:`FolderJournal` in ``<ctx.scratch_dir>/<stage.name>/<unit>/`` (a run's
    ``checkpoints``, a cell's ``cell/checkpoints``), kept for the same networks (``models``:
    the run's model, or a cell's seed -> model) and the settings its DONE marker records
    (``stage.unit_settings(config, unit)``: a setting that only chooses which units exist,
    such as the checkpoints, leaves it) and emptied for others; written when an exception
    leaves the block, removed when the block ends without one. ``folder``: another place
    (inside a unit's own scratch folder, e.g. beside a fine-tuning's checkpoints)."""
    work = ctx.scratch_dir / stage.name / unit if folder is None else folder
    settings = jsonable(stage.unit_settings(config, unit))
    nets = {"model": models} if isinstance(models, torch.nn.Module) else models
    start = {"digest": state_digest(json.dumps(settings, sort_keys=True),
                                    {str(k): m.state_dict() for k, m in nets.items()}),
             "what": unit, "settings": settings}
    if go_on(work, start, needed=None) and _holds_progress(work):
        log.info("%s: %s goes on from its saved progress in %s", ctx.identity.run_id, unit,
                 work)
    with FolderJournal(work) as journal:
        yield journal
    finish(work)


def saved_progress(scratch: Path, unit: str, settings: Optional[Mapping[str, Any]] = None
                   ) -> Optional[str]:
    """What the unit ``unit`` saved on the way in ``<scratch>/<stage>/<unit>/`` (a run's
    ``checkpoints``, a cell's ``cell/checkpoints``), in words for ``landscape-status``: where,
    and the computing time it holds when its journal recorded one; None when it saved
    nothing. ``settings``: the unit's settings now (``stage.unit_settings``); progress saved
    with others is said to be of no use (the next attempt empties the folder; progress saved
    for other weights, such as a retrained checkpoint, is not told apart here)."""
    for work in sorted(scratch.glob(f"*/{glob.escape(unit)}")):
        start = _recorded_start(work)
        if start is None or not _holds_progress(work):
            continue
        where = f"progress saved in {work.relative_to(scratch.parent)}"
        if settings is not None and "settings" in start:
            changes = settings_changes(start["settings"], jsonable(settings))
            if changes is not None:
                return f"{where} is of other settings ({changes}): the next attempt starts again"
        try:
            seconds = float(json.loads((work / SECONDS).read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return where
        return f"{where} ({seconds / 60:.1f} min of computing)"
    return None


def _holds_progress(work: Path) -> bool:
    """Whether the scratch folder ``work`` holds anything but the start it records."""
    return any(p.name != START for p in work.iterdir())


def _recorded_start(work: Path) -> Optional[dict]:
    """The start a scratch folder records (None: none, or unreadable)."""
    try:
        return json.loads((work / START).read_text())
    except (OSError, ValueError):
        return None


class FolderJournal:
    """A :class:`landscape.journal.Journal` in the scratch folder ``work``: each key one file
    ``<key>.pt`` (the key %-quoted: a layer's name may hold any character) written atomically.
    What is put is written every ``every`` seconds (and by :meth:`flush`), in the order it was
    put, so a computation saves a basis vector before the state that needs it and, after a
    kill, does at most about ``every`` seconds of work again; used as a context manager, it
    writes what was put when an exception leaves it (submitit's requeue). A file that cannot
    be read counts as not saved. :meth:`seconds`: the computing time of the work kept, over
    every attempt (up to what was put last: work after it is done again)."""

    def __init__(self, work: Path, every: Optional[float] = None) -> None:
        self.work = Path(work)
        self.every = SAVE_EVERY_S if every is None else every
        self.pending: dict[str, dict[str, Any]] = {}
        self._written = time.monotonic()
        self._opened = self._kept = time.perf_counter()
        try:
            self._before = float(json.loads((self.work / SECONDS).read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            self._before = 0.0

    def __enter__(self) -> "FolderJournal":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """Leaving by an exception (submitit's requeue on a time limit or preemption, an
        error): what was put is written, so the next attempt goes on from the last step."""
        if error is not None and self.pending:
            try:
                self.flush()
            except Exception as e:  # the original exception matters more
                log.warning("saved progress not written: %s", e)

    def get(self, key: str) -> Optional[dict[str, Any]]:
        if key in self.pending:
            return self.pending[key]
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            log.warning("saved progress not used: %s", e)
            return None

    def put(self, key: str, state: dict[str, Any]) -> None:
        self.pending.pop(key, None)  # to the end: written after what was put before it
        self.pending[key] = state
        self._kept = time.perf_counter()
        if time.monotonic() - self._written >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write what was put since the last write."""
        for key, state in self.pending.items():
            save_checkpoint(self._path(key), state)
        atomic_write_json(self.work / SECONDS, {"seconds": self.seconds()})
        self.pending.clear()
        self._written = time.monotonic()

    def _path(self, key: str) -> Path:
        return self.work / f"{quote(key, safe='')}.pt"

    @property
    def earlier(self) -> float:
        """The computing time of the work earlier attempts kept."""
        return self._before

    def seconds(self) -> float:
        return self._before + self._kept - self._opened
