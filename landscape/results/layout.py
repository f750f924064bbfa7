"""Where everything lives under a results root, and the checks of a root's path. Every path is relative to the root it is given,
so a results folder can be copied or moved as a whole::

    <root>/<cell>/cell.json                               the cell's identity fields
    <root>/<cell>/seed=<s>/config.json                    the run's whole config
    <root>/<cell>/seed=<s>/checkpoints/{init,last,final}.pt
    <root>/<cell>/seed=<s>/stages/<unit>/rows.csv + arrays.npz + DONE (or FAILED)
    <root>/<cell>/cell/stages/<unit>/...                  cell-level stage units (no seed)
    <root>/<cell>/cell/checkpoints/<stage>/<unit>/        a cell unit's progress (while it runs)
    <root>/.submitit/submissions.jsonl                    what was submitted, which job holds it
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CELL_DIR = "cell"  # cell-level stages live in <cell>/cell/stages/<unit>/
CELL_RECORD = "cell.json"
RUN_CONFIG = "config.json"
SUBMISSIONS = Path(".submitit") / "submissions.jsonl"
DONE, FAILED, ROWS, ARRAYS = "DONE", "FAILED", "rows.csv", "arrays.npz"


@dataclass(frozen=True)
class RunPaths:
    """The folders of one run (``run`` is None for a cell without a seed)."""

    root: Path
    cell: Path
    run: Path | None = None

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def scratch(self) -> Path:
        """Where units keep what they save on the way (``<stage>/<unit>/`` in it): a run's
        checkpoints folder, a cell's (:attr:`cell_scratch`)."""
        return self.checkpoints if self.run is not None else self.cell_scratch

    @property
    def cell_scratch(self) -> Path:
        """Where the cell-level units keep what they save on the way: ``cell/checkpoints``."""
        return self.cell_stages / "checkpoints"

    @property
    def run_dir(self) -> Path:
        if self.run is None:
            raise ValueError(f"{self.cell} is a cell, it has no run folder")
        return self.run

    @property
    def cell_stages(self) -> Path:
        """The folder that holds the cell-level stage units (what ``stage_dir`` is given)."""
        return self.cell / CELL_DIR


def run_paths(root: str | Path, cell_name: str, seed: int | None = None) -> RunPaths:
    cell = Path(root).expanduser() / cell_name
    return RunPaths(Path(root).expanduser(), cell, None if seed is None else cell / f"seed={seed}")


def cell_of(run_id: str) -> str:
    """The cell of a run id (``<cell>/seed=<s>``; a cell's own id is its name)."""
    return run_id.split("/seed=", 1)[0]


def stage_dir(run_dir: Path, unit: str) -> Path:
    return Path(run_dir) / "stages" / unit


class ResultsRootError(ValueError):
    """The results root cannot hold results (a file, or a folder that cannot be created)."""


def check_root(root: str | Path) -> None:
    """A usable results root: an existing folder, or a path whose nearest existing ancestor is
    a folder we may write in (:class:`ResultsRootError` naming ``results_root`` otherwise)."""
    if not str(root).strip():
        raise ResultsRootError("results_root must be a folder path, got an empty string")
    path = Path(root).expanduser()
    check_lengths([path])
    if path.exists():
        if not path.is_dir():
            raise ResultsRootError(f"results_root={root} is a file, not a folder")
        return
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ResultsRootError(f"results_root={root} cannot be created: {parent} is not a "
                               "folder you can write in")


# The longest file name written in a unit folder: an atomic writer's temporary file
# (``landscape.storage``: ``.<name>.<8 random characters>.tmp``).
LONGEST_FILE = f".{ARRAYS}.{'x' * 8}.tmp"


def check_lengths(folders: list[Path]) -> None:
    """Every file these folders will hold fits the file system: each path component within
    its ``NAME_MAX`` and the whole path within ``PATH_MAX`` (``ResultsRootError`` naming the
    component and the limit otherwise, before anything is written)."""
    for folder in folders:
        path = Path(folder).expanduser().absolute() / LONGEST_FILE
        existing = next((p for p in path.parents if _exists(p)), Path("/"))
        name_max = _limit(existing, "PC_NAME_MAX", 255)
        path_max = _limit(existing, "PC_PATH_MAX", 4096)
        for part in path.parts:
            if len(part.encode()) > name_max:
                raise ResultsRootError(
                    f"the folder name {part[:40]}... ({len(part.encode())} bytes) is longer "
                    f"than the file system allows ({name_max}); shorten results_root or the "
                    "name that makes it (a stage or criterion name)")
        if len(str(path).encode()) >= path_max:
            raise ResultsRootError(
                f"{folder} would hold paths of {len(str(path).encode())} bytes, longer than the "
                f"file system allows ({path_max}); choose a shorter results_root")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to look up
        return False


def _limit(path: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(path, name))
    except (OSError, ValueError):
        return default


def results_folder(root: Any) -> Path:
    """``root`` as the path of an existing results folder; TypeError / ValueError when it is
    no path, FileNotFoundError / NotADirectoryError (naming it) when there is no folder."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"a results folder path (str or Path) is needed, got {root!r}")
    if not str(root).strip():
        raise ValueError("a results folder path is needed, got an empty string")
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no results folder at {path.absolute()}: check the path "
                                "(the results_root the runs were made with)")
    if not path.is_dir():
        raise NotADirectoryError(f"{path.absolute()} is a file, not a results folder")
    return path
