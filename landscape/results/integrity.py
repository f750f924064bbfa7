"""Whether a stage unit's files are those its DONE marker recorded: the marker read
defensively, the fingerprint (size and sha256) ``write_stage`` records of each file, and the
check of a unit against it. A damaged unit is left out of ``load`` and recomputed by the
pipeline (``stale_reason``)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd

from landscape.results.layout import ARRAYS, DONE, ROWS, stage_dir

FILES = "files"  # DONE's record of the unit's files: {name: {"bytes": n, "sha256": hex}}
UNREADABLE = "unreadable"  # read_done's key for why a marker could not be read


class DamagedUnitError(RuntimeError):
    """A stage unit's files are not those its DONE marker recorded (truncated, overwritten);
    ``reason`` says which file and how."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def damage_error(label: str, reason: str) -> DamagedUnitError:
    """The error for ``label`` (e.g. "stage unit prune of <run>") damaged for ``reason``."""
    return DamagedUnitError(f"{label} is damaged: {reason}. Running its stage again (the same "
                            "command) recomputes it", reason)


def is_done(run_dir: Path, stage: str) -> bool:
    return (stage_dir(run_dir, stage) / DONE).is_file()


def read_done(run_dir: Path, stage: str) -> dict[str, Any] | None:
    """The unit's DONE marker, or None when it has none. A marker that cannot be read (empty,
    not JSON, not a JSON object) reads as ``{"status": "unknown", "unreadable": why}``: the
    unit is damaged (:func:`unit_damage` says so)."""
    path = stage_dir(run_dir, stage) / DONE
    if not path.is_file():
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return {"status": "unknown", UNREADABLE: f"cannot be read ({e})"}
    try:
        done = json.loads(text)
    except json.JSONDecodeError:
        return {"status": "unknown", UNREADABLE: "is empty" if not text.strip() else "is not JSON"}
    if not isinstance(done, dict):
        return {"status": "unknown", UNREADABLE: "is not a JSON object"}
    return done


def unit_damage(out_dir: Path, unit: str, done: Optional[Mapping[str, Any]] = None
                ) -> str | None:
    """Why the done unit ``unit`` of ``out_dir`` (a run folder, or a cell's ``cell`` folder)
    cannot be trusted, ending in "(damaged)"; None when it is intact or not done. ``done``:
    its marker, when already read. ``rows.csv`` is checked by sha256, ``arrays.npz`` by size
    (a truncated file; the pipeline and status ask this of every unit, and saved Hessian
    eigenvectors can be hundreds of MB): its sha256 is checked where it is read
    (``read_arrays``), and a mismatch there recomputes the unit too."""
    done = read_done(out_dir, unit) if done is None else done
    return (None if done is None
            else verify(stage_dir(out_dir, unit), done, hash_arrays=False).reason)


def fingerprint(data: bytes) -> dict[str, Any]:
    """What DONE records of a file: its size in bytes and the sha256 of its content."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class Checked:
    """What :func:`verify` found: why the unit is damaged (None: intact) and the bytes it
    read on the way (reused so that a file is read once)."""

    reason: Optional[str]
    rows: Optional[bytes] = None
    arrays: Optional[bytes] = None


def verify(unit_dir: Path, done: Mapping[str, Any], *, hash_arrays: bool = True) -> Checked:
    """Check a done unit's files against its DONE marker: ``rows.csv`` by size and sha256;
    ``arrays.npz`` by size, and by sha256 too with ``hash_arrays`` (it may be large); an
    ``arrays.npz`` the marker does not record, or a recorded file that is missing, is damage.
    A marker of a version that recorded no files is checked by its row count only."""
    if UNREADABLE in done:
        return Checked(f"its {DONE} marker {done[UNREADABLE]} (damaged)")
    try:
        rows = (unit_dir / ROWS).read_bytes()
    except OSError:
        return Checked(f"its {ROWS} is missing or unreadable (damaged)")
    files = done.get(FILES)
    if files is None:
        return Checked(_row_count_damage(rows, done.get("rows")), rows)
    if not isinstance(files, dict) or not all(_is_record(r) for r in files.values()) \
            or ROWS not in files:
        return Checked(f"its {DONE} marker's record of its files is malformed (damaged)")
    why = _mismatch(ROWS, rows, files[ROWS])
    if why:
        return Checked(why)
    path, record = unit_dir / ARRAYS, files.get(ARRAYS)
    if record is None:
        extra = path.exists()
        return Checked(f"it has an {ARRAYS} that its {DONE} does not record (damaged)"
                        if extra else None, rows)
    if not hash_arrays:
        try:
            size = path.stat().st_size
        except OSError:
            return Checked(f"its {ARRAYS} is missing or unreadable (damaged)")
        why = _size_mismatch(ARRAYS, size, record)
        return Checked(why, None if why else rows)
    try:
        arrays = path.read_bytes()
    except OSError:
        return Checked(f"its {ARRAYS} is missing or unreadable (damaged)")
    why = _mismatch(ARRAYS, arrays, record)
    return Checked(why) if why else Checked(None, rows, arrays)


def _is_record(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("bytes"), int)
            and isinstance(record.get("sha256"), str))


def _size_mismatch(name: str, size: int, record: Mapping[str, Any]) -> str | None:
    if size != record["bytes"]:
        return f"its {name} holds {size} bytes, {DONE} recorded {record['bytes']} (damaged)"
    return None


def _mismatch(name: str, data: bytes, record: Mapping[str, Any]) -> str | None:
    """Why ``data`` (the content of the file ``name``) is not what DONE recorded, or None."""
    why = _size_mismatch(name, len(data), record)
    if why is None and hashlib.sha256(data).hexdigest() != record["sha256"]:
        why = f"its {name} differs from the content {DONE} recorded (sha256) (damaged)"
    return why


def _row_count_damage(data: bytes, expected: Any) -> str | None:
    """The check of a marker that recorded no files: ``rows.csv`` (``data``) must hold the
    number of rows DONE recorded (None when that was not recorded either)."""
    if not isinstance(expected, int):
        return None  # a marker of a version that did not record the count
    lines = sum(1 for line in data.splitlines() if line.strip()) - 1
    if lines != expected:  # a note with a line break: count rows, not lines
        try:
            lines = len(pd.read_csv(io.BytesIO(data), dtype=str))
        except (ValueError, pd.errors.ParserError):
            return f"its {ROWS} is unreadable (damaged)"
    if lines != expected:
        return f"its {ROWS} holds {lines} rows, {DONE} recorded {expected} (damaged)"
    return None
