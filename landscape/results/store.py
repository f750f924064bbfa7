"""Stage units on disk: atomic rows (+ arrays), the DONE marker written last (with the
fingerprint of each file, checked by ``integrity``), FAILED records, and the one loader of a
results root.

Only this package reads or writes files under a results root (see ``layout``).
``load(root)`` returns one long DataFrame of the units whose files verify.
"""

from __future__ import annotations

import io
import json
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from landscape.results.derived import align_derived
from landscape.results.integrity import (
    FILES, DamagedUnitError, damage_error, fingerprint, read_done, unit_damage, verify,
)
from landscape.results.layout import ARRAYS, CELL_DIR, DONE, FAILED, ROWS, results_folder, stage_dir
from landscape.results.rows import UnitRows, read_rows, read_units, unreadable
from landscape.results.schema import to_frame, validate_rows
from landscape.storage import atomic_write, atomic_write_json, atomic_write_text


class DamagedResultsWarning(UserWarning):
    """:func:`load` / :func:`load_arrays` left damaged units out."""

def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, unknown types strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def settings_changes(recorded: Mapping[str, Any], settings: Mapping[str, Any]
                     ) -> str | None:
    """The settings (JSON values) that differ, in words ("k 5 -> 8, tol ..."); None: none."""
    keys = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
    return ", ".join(f"{k} {recorded.get(k)!r} -> {settings.get(k)!r}" for k in keys) or None


def stale_reason(out_dir: Path, unit: str, settings: Mapping[str, Any],
                 seeds: list[int] | None = None, *,
                 defaults: Mapping[str, Any] | None = None,
                 ignore: Sequence[str] = ()) -> str | None:
    """None if the unit is done with these settings (and these seeds, for a cell unit that
    needs trained seeds); otherwise why it must be computed ("not done", "settings changed:
    k 5 -> 8", "seeds changed: ..."). A marker written before settings were recorded counts
    as current for its settings; a setting added since the marker was written (missing from
    it) counts as unchanged while it has its value in ``defaults``; settings in ``ignore``
    cannot change this unit's rows and are not compared."""
    done = read_done(out_dir, unit)
    if done is None:
        return "not done"
    damage = unit_damage(out_dir, unit, done)
    if damage:
        return damage
    settings = jsonable({k: v for k, v in settings.items() if k not in ignore})
    recorded = {k: v for k, v in done.get("settings", settings).items() if k not in ignore}
    added = jsonable({k: v for k, v in (defaults or {}).items()
                      if k not in recorded and k not in ignore})
    recorded = {**added, **recorded}
    changes = settings_changes(recorded, settings)
    if changes is not None:
        return f"settings changed: {changes}"
    if seeds is not None and done.get("seeds") != seeds:
        return f"seeds changed: {done.get('seeds')} -> {seeds}"
    return None


def clear_done(run_dir: Path, stage: str) -> None:
    """Remove a unit's DONE marker (before it is recomputed): it is then not done for
    :func:`load` until the new rows are complete."""
    (stage_dir(run_dir, stage) / DONE).unlink(missing_ok=True)


def write_stage(run_dir: Path, stage: str, rows: Iterable[Mapping[str, Any]], *,
                status: str = "ok", info: Mapping[str, Any] | None = None,
                arrays: Mapping[str, Any] | None = None) -> Path:
    """Write a stage's rows (and named arrays, as ``arrays.npz``), then its DONE marker.

    Every file is written atomically; the marker comes last, so a stage is either complete
    or absent for :func:`load`. The marker records the row count and the size and sha256 of
    each file (``"files"``), from the bytes written: later damage to a file is detected.
    """
    rows = validate_rows(rows)
    d = stage_dir(run_dir, stage)
    buf = io.StringIO()
    to_frame(rows).to_csv(buf, index=False)
    text = buf.getvalue().encode("utf-8")
    files = {ROWS: fingerprint(text)}
    if arrays:
        npz = io.BytesIO()
        np.savez_compressed(npz, **{k: np.asarray(v) for k, v in arrays.items()})
        data = npz.getvalue()
        files[ARRAYS] = fingerprint(data)
        atomic_write(d / ARRAYS, lambda f: f.write(data))
    else:
        (d / ARRAYS).unlink(missing_ok=True)  # a recomputed unit keeps no arrays of before
    atomic_write(d / ROWS, lambda f: f.write(text))
    (d / FAILED).unlink(missing_ok=True)
    atomic_write_json(d / DONE, {"stage": stage, "status": status,
                                 "finished_unix": time.time(), **(info or {}),
                                 "rows": len(rows), FILES: files})
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


def _markers(root: Path, marker: str, unit: str = "*") -> Iterator[tuple[Path, str, str]]:
    """Every stage unit (named ``unit``, default any) under ``root`` that holds ``marker``
    (DONE or FAILED), sorted: its folder (run or cell), its name and its ``run_id`` (the cell
    name for cell-level units). The one walker of a results root's units."""
    for path in sorted(root.glob(f"**/stages/{unit}/{marker}")):
        out_dir = path.parents[2]
        run_id = out_dir.relative_to(root).as_posix().removesuffix(f"/{CELL_DIR}")
        yield out_dir, path.parent.name, run_id


def _problems(root: str | Path, markers: tuple[str, ...]) -> pd.DataFrame:
    """run_id, unit, reason of the failed (FAILED) and/or damaged (DONE) units under root."""
    root = results_folder(root)
    rows = []
    for marker in markers:
        for out_dir, unit, run_id in _markers(root, marker):
            reason = unit_damage(out_dir, unit) if marker == DONE else read_failure(out_dir, unit)
            if reason:
                rows.append({"run_id": run_id, "unit": unit, "reason": reason})
    return pd.DataFrame(rows, columns=["run_id", "unit", "reason"])


def failures(root: str | Path) -> pd.DataFrame:
    """Every failed or damaged stage unit under ``root``: ``run_id`` (the cell name for
    cell-level units), ``unit`` and ``reason``. Failed units have no rows and damaged ones
    (see :func:`damaged`) not the right ones, so :func:`load` does not show them; running the
    stage again recomputes them."""
    return _problems(root, (FAILED, DONE))


def damaged(root: str | Path) -> pd.DataFrame:
    """Every done stage unit under ``root`` whose files are not those its DONE marker recorded
    (an unreadable marker; a file missing, of another size or content (sha256), or not
    recorded): ``run_id``, ``unit``, ``reason``. Running the same command again (the run or
    the grid) recomputes them. Reads every file it checks, arrays included."""
    return _problems(root, (DONE,))


def read_stage(run_dir: Path, stage: str) -> pd.DataFrame:
    """The rows of one finished stage unit of one run, checked against its DONE marker as in
    :func:`load`. FileNotFoundError when it is not done; :class:`DamagedUnitError` when its rows
    are not those recorded (it loses its DONE marker then: the same command recomputes it)."""
    done = read_done(run_dir, stage)
    if done is None:
        raise FileNotFoundError(f"stage {stage} of {run_dir} is not done; run it first")
    rows, why = _verified_rows(stage_dir(run_dir, stage), done, stage)
    if why is None:
        return rows
    clear_done(run_dir, stage)
    raise damage_error(f"stage unit {stage} of {run_dir}", why)


def _verified_rows(unit_dir: Path, done: Mapping[str, Any], unit: str) -> tuple[Any, Any]:
    """(rows, None) when rows.csv verifies against DONE (arrays.npz by size), else (None, why)."""
    checked = verify(unit_dir, done, hash_arrays=False)
    if checked.reason is not None:
        return None, checked.reason
    try:
        return read_rows(checked.rows, unit), None
    except (ValueError, TypeError, pd.errors.ParserError) as e:
        return None, unreadable(e)


def has_results(root: str | Path) -> bool:
    """Whether any stage unit under ``root`` is finished."""
    return next(Path(root).glob("**/stages/*/" + DONE), None) is not None


def _warn_damaged(root: Path, bad: list[dict[str, str]], what: str) -> None:
    shown = "; ".join(f"{b['unit']}: {b['reason']}" for b in bad[:10])
    more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    warnings.warn(
        f"{root}: {len(bad)} damaged stage unit(s) left out of the {what} (their files are not "
        f"those their DONE marker recorded): {shown}{more}. Running the same command again "
        "(landscape-run, or the grid) recomputes them; landscape-status and "
        "landscape.results.damaged(root) list them.", DamagedResultsWarning, stacklevel=3)


def load(root: str | Path) -> pd.DataFrame:
    """Every finished stage of every run under ``root`` as one long DataFrame.

    Only units whose files verify against their DONE marker are read: ``rows.csv`` by size
    and sha256, ``arrays.npz`` by size only (its content is not read here, so that loading a
    big root stays fast; :func:`read_arrays` / :func:`load_arrays` check its sha256). Damaged
    units are left out with one :class:`DamagedResultsWarning` and listed in
    ``df.attrs["damaged"]`` (``{"unit": <unit folder relative to root>, "reason": ...}``).
    Stages still running (no DONE marker) are skipped, so this can be called while a grid is
    in progress. A folder with nothing finished gives an empty frame with the schema's
    columns; a path that is no folder raises (FileNotFoundError / NotADirectoryError).
    """
    root = results_folder(root)
    units, bad = [], []
    for out_dir, unit, _ in _markers(root, DONE):
        done = read_done(out_dir, unit)
        if done is None:  # recomputed since we listed it
            continue
        checked = verify(stage_dir(out_dir, unit), done, hash_arrays=False)
        label = stage_dir(out_dir, unit).relative_to(root).as_posix()
        if checked.reason is None:
            units.append(UnitRows(checked.rows, unit, done.get("rows"), label))
        else:
            bad.append({"unit": label, "reason": checked.reason})
    df = read_units(units, bad)  # one parse for all (a unit that cannot be read joins bad)
    if bad:
        _warn_damaged(root, bad, "results")
    df = align_derived(df) if df is not None else to_frame([])
    df.attrs["damaged"] = bad
    return df


def _arrays(unit_dir: Path, done: Mapping[str, Any], label: str) -> dict[str, np.ndarray] | None:
    """The arrays of a done unit, checked against its marker first (None when it saved none);
    :class:`DamagedUnitError` naming ``label`` when its files are damaged."""
    checked = verify(unit_dir, done)
    if checked.reason:
        raise damage_error(label, checked.reason)
    path = unit_dir / ARRAYS
    if checked.arrays is None and not path.is_file():
        return None
    try:
        with np.load(io.BytesIO(checked.arrays) if checked.arrays is not None else path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        # only a marker that recorded no files gets here with a bad file: nothing detects it
        why = f"its {ARRAYS} is unreadable ({type(e).__name__}: {e}) (damaged)"
        raise DamagedUnitError(
            f"{label}: {why}; its {DONE} marker records no checksum (written by an older "
            "version). Running its stage again (the same command) recomputes it", why) from e


def read_arrays(run_dir: Path, stage: str) -> dict[str, np.ndarray]:
    """The arrays a finished stage unit of one run saved (e.g. pruning masks), after checking
    the unit's files against its DONE marker, sha256 of the arrays included
    (:class:`DamagedUnitError` when they differ; the unit loses its DONE marker then, so that
    running the command again recomputes it before the units that read it).
    FileNotFoundError when the unit is not done or saved no arrays."""
    done = read_done(run_dir, stage)
    if done is None:
        raise FileNotFoundError(f"stage {stage} of {run_dir} is not done; run it first")
    try:
        out = _arrays(stage_dir(run_dir, stage), done, f"stage unit {stage} of {run_dir}")
    except DamagedUnitError:
        clear_done(run_dir, stage)
        raise
    if out is None:
        raise FileNotFoundError(f"stage unit {stage} of {run_dir} saved no arrays "
                                f"({stage_dir(run_dir, stage) / ARRAYS})")
    return out


def load_arrays(root: str | Path, stage: str) -> dict[str, dict[str, np.ndarray]]:
    """Arrays saved by finished units of ``stage`` (e.g. ``"importance_init"``) under ``root``,
    keyed by the unit's run folder relative to ``root`` (the ``run_id`` of a run's rows; a
    cell-level unit's key ends in ``/cell``). Units whose
    files do not verify (sha256 included) are left out with one warning, as in :func:`load`."""
    root = results_folder(root)
    out, bad = {}, []
    for out_dir, unit, _ in _markers(root, DONE, stage):
        done = read_done(out_dir, unit)
        if done is None:  # recomputed since we listed it
            continue
        unit_dir = stage_dir(out_dir, unit)
        try:
            arrays = _arrays(unit_dir, done, f"stage unit {unit_dir}")
        except DamagedUnitError as e:
            bad.append({"unit": unit_dir.relative_to(root).as_posix(), "reason": e.reason})
            continue
        if arrays is not None:
            out[out_dir.relative_to(root).as_posix()] = arrays
    if bad:
        _warn_damaged(root, bad, "arrays")
    return out
