"""Stage units on disk: atomic rows (+ arrays), the DONE marker written last, FAILED records,
and the one loader of a results root.

Only this package reads or writes files under a results root (see ``layout``).
``load(root)`` returns one long DataFrame.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from landscape.results.layout import ARRAYS, CELL_DIR, DONE, FAILED, ROWS, stage_dir
from landscape.results.schema import DTYPES, to_frame, validate_rows
from landscape.storage import atomic_write, atomic_write_json, atomic_write_text


def is_done(run_dir: Path, stage: str) -> bool:
    return (stage_dir(run_dir, stage) / DONE).is_file()


def read_done(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = stage_dir(run_dir, stage) / DONE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"status": "unknown"}


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, unknown types strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def stale_reason(out_dir: Path, unit: str, settings: Mapping[str, Any],
                 seeds: list[int] | None = None, *,
                 defaults: Mapping[str, Any] | None = None) -> str | None:
    """None if the unit is done with these settings (and these seeds, for a cell unit that
    needs trained seeds); otherwise why it must be computed ("not done", "settings changed:
    k 5 -> 8", "seeds changed: ..."). A marker written before settings were recorded counts
    as current for its settings; a setting added since the marker was written (missing from
    it) counts as unchanged while it has its value in ``defaults``."""
    done = read_done(out_dir, unit)
    if done is None:
        return "not done"
    damage = _damage(out_dir, unit, done)
    if damage:
        return damage
    settings = jsonable(dict(settings))
    recorded = done.get("settings", settings)
    added = jsonable({k: v for k, v in (defaults or {}).items() if k not in recorded})
    recorded = {**added, **recorded}
    if recorded != settings:
        keys = sorted(k for k in set(recorded) | set(settings)
                      if recorded.get(k) != settings.get(k))
        return "settings changed: " + ", ".join(
            f"{k} {recorded.get(k)!r} -> {settings.get(k)!r}" for k in keys)
    if seeds is not None and done.get("seeds") != seeds:
        return f"seeds changed: {done.get('seeds')} -> {seeds}"
    return None


def _damage(out_dir: Path, unit: str, done: Mapping[str, Any]) -> str | None:
    """Why a done unit's files cannot be trusted (an unreadable DONE, rows.csv missing or
    holding another number of rows than DONE recorded), or None."""
    if done.get("status") == "unknown":
        return f"its {DONE} marker is unreadable (damaged)"
    expected = done.get("rows")
    if not isinstance(expected, int):
        return None  # a marker of a version that did not record the count
    path = stage_dir(out_dir, unit) / ROWS
    try:
        with open(path, "rb") as f:
            lines = sum(1 for line in f if line.strip()) - 1
        if lines != expected:  # a note with a line break: count rows, not lines
            lines = len(pd.read_csv(path, dtype=str))
    except (OSError, ValueError, pd.errors.ParserError):
        return f"its {ROWS} is missing or unreadable (damaged)"
    if lines != expected:
        return f"its {ROWS} holds {lines} rows, {DONE} recorded {expected} (damaged)"
    return None


def clean_temp(directory: Path) -> None:
    """Remove the temporary files a killed atomic writer left in ``directory``."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def clear_done(run_dir: Path, stage: str) -> None:
    """Remove a unit's DONE marker (before it is recomputed): it is then not done for
    :func:`load` until the new rows are complete."""
    (stage_dir(run_dir, stage) / DONE).unlink(missing_ok=True)


def write_stage(run_dir: Path, stage: str, rows: Iterable[Mapping[str, Any]], *,
                status: str = "ok", info: Mapping[str, Any] | None = None,
                arrays: Mapping[str, Any] | None = None) -> Path:
    """Write a stage's rows (and named arrays, as ``arrays.npz``), then its DONE marker.

    Every file is written atomically; the marker comes last, so a stage is either complete
    or absent for :func:`load`.
    """
    rows = validate_rows(rows)
    d = stage_dir(run_dir, stage)
    buf = io.StringIO()
    to_frame(rows).to_csv(buf, index=False)
    if arrays:
        npz = io.BytesIO()
        np.savez_compressed(npz, **{k: np.asarray(v) for k, v in arrays.items()})
        atomic_write(d / ARRAYS, lambda f: f.write(npz.getvalue()))
    else:
        (d / ARRAYS).unlink(missing_ok=True)  # a recomputed unit keeps no arrays of before
    atomic_write_text(d / ROWS, buf.getvalue())
    (d / FAILED).unlink(missing_ok=True)
    atomic_write_json(d / DONE, {"stage": stage, "status": status, "rows": len(rows),
                                 "finished_unix": time.time(), **(info or {})})
    return d


def write_failure(run_dir: Path, stage: str, message: str) -> None:
    """Record why a stage failed (shown by status tools); no DONE marker is written."""
    atomic_write_text(stage_dir(run_dir, stage) / FAILED, message)


def read_failure(run_dir: Path, stage: str) -> str | None:
    """The reason a stage unit failed (the last line of its traceback), or None."""
    path = stage_dir(run_dir, stage) / FAILED
    if not path.is_file():
        return None
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "failed (empty FAILED file)"


def failures(root: str | Path) -> pd.DataFrame:
    """Every failed or damaged stage unit under ``root``: ``run_id`` (the cell name for
    cell-level units), ``unit`` and ``reason``. Failed units have no rows and damaged ones
    (a DONE whose rows.csv is unreadable or holds another number of rows) not the right
    ones, so :func:`load` cannot show them; running the stage again recomputes them."""
    root = Path(root)
    rows = []
    for marker, damaged in ((FAILED, False), (DONE, True)):
        for path in sorted([*root.glob(f"*/seed=*/stages/*/{marker}"),
                            *root.glob(f"*/{CELL_DIR}/stages/*/{marker}")]):
            run_dir, unit = path.parents[2], path.parent.name
            reason = (_damage(run_dir, unit, read_done(run_dir, unit) or {}) if damaged
                      else read_failure(run_dir, unit))
            if reason:
                rows.append({"run_id": run_dir.relative_to(root).as_posix()
                            .removesuffix(f"/{CELL_DIR}"), "unit": unit, "reason": reason})
    return pd.DataFrame(rows, columns=["run_id", "unit", "reason"])


def read_stage(run_dir: Path, stage: str) -> pd.DataFrame:
    return _read_rows(stage_dir(run_dir, stage) / ROWS)


def _read_rows(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={c: ("string" if t in ("string", "boolean") else None)
                                  for c, t in DTYPES.items()}, keep_default_na=True)
    df = to_frame(df.to_dict("records"))
    df["unit"] = df["unit"].fillna(path.parent.name)  # rows written before the column existed
    return df


def has_results(root: str | Path) -> bool:
    """Whether any stage unit under ``root`` is finished."""
    return next(Path(root).glob("**/stages/*/" + DONE), None) is not None


def load(root: str | Path) -> pd.DataFrame:
    """Every finished stage of every run under ``root`` as one long DataFrame.

    Stages still running (no DONE marker) are skipped; unreadable files are skipped with a
    warning, so this can be called while a grid is in progress.
    """
    root = Path(root)
    frames = []
    for done in sorted(root.glob("**/stages/*/" + DONE)):
        rows = done.parent / ROWS
        try:
            frames.append(_read_rows(rows))
        except (OSError, ValueError, pd.errors.ParserError) as e:
            warnings.warn(f"skipping unreadable results file {rows}: {e}", stacklevel=2)
    if not frames:
        return to_frame([])
    return pd.concat(frames, ignore_index=True)


def read_arrays(run_dir: Path, stage: str) -> dict[str, np.ndarray]:
    """The arrays a finished stage unit of one run saved (e.g. pruning masks)."""
    if not is_done(run_dir, stage):
        raise FileNotFoundError(f"stage {stage} of {run_dir} is not done; run it first")
    with np.load(stage_dir(run_dir, stage) / ARRAYS) as z:
        return {k: z[k] for k in z.files}


def load_arrays(root: str | Path, stage: str) -> dict[str, dict[str, np.ndarray]]:
    """Arrays saved by finished units of ``stage`` (e.g. ``"importance_init"``) under ``root``,
    keyed by the run folder relative to ``root`` (the ``run_id`` of the rows)."""
    root = Path(root)
    out = {}
    for done in sorted(root.glob(f"**/stages/{stage}/{DONE}")):
        path = done.parent / ARRAYS
        if path.is_file():
            with np.load(path) as z:
                out[done.parents[2].relative_to(root).as_posix()] = {k: z[k] for k in z.files}
    return out
