"""Tidy results: the row schema, the metric names, atomic stage output and the one loader.

Layout of one run (see ``landscape.runs``)::

    <root>/<cell>/seed=<s>/stages/<stage>/rows.csv   one observation per row
    <root>/<cell>/seed=<s>/stages/<stage>/DONE       written last; JSON with status and timing
    <root>/<cell>/cell/stages/<stage>/...            cell-level stages (e.g. CKA between seeds)

Only this module reads or writes these files. ``load(root)`` returns one long DataFrame.
"""

from __future__ import annotations

import io
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from landscape.storage import atomic_write, atomic_write_json, atomic_write_text

# Identity columns, in order (DESIGN.md §4). pool_padding is kept too: a kernel/stride sweep
# needs it to tell settings apart.
ID_COLUMNS = [
    "run_id", "arch", "dataset", "pool_level", "pool_kernel", "pool_stride", "pool_padding",
    "receptive_field", "width", "seed", "stage", "criterion", "prune_rate", "finetuned",
]
VALUE_COLUMNS = ["metric", "value"]
OPTIONAL_COLUMNS = ["index", "layer", "layer_b", "seed_b", "note"]
COLUMNS = ID_COLUMNS + VALUE_COLUMNS + OPTIONAL_COLUMNS

DTYPES: dict[str, str] = {
    "run_id": "string", "arch": "string", "dataset": "string", "pool_level": "Int64",
    "pool_kernel": "Int64", "pool_stride": "Int64", "pool_padding": "Int64",
    "receptive_field": "Int64", "width": "float64", "seed": "Int64", "stage": "string",
    "criterion": "string", "prune_rate": "float64", "finetuned": "boolean", "metric": "string",
    "value": "float64", "index": "Int64", "layer": "string", "layer_b": "string",
    "seed_b": "Int64", "note": "string",
}

# Every metric name, one per quantity, with its meaning and unit. Stages add theirs here.
METRICS: dict[str, str] = {
    "train_loss": "mean training cross-entropy over an epoch (augmented data); index = epoch",
    "train_acc": "training accuracy over an epoch, fraction in [0, 1]; index = epoch",
    "test_loss": "mean test cross-entropy after an epoch; index = epoch",
    "test_acc": "test accuracy after an epoch, fraction in [0, 1]; index = epoch",
    "learning_rate": "learning rate used during an epoch; index = epoch",
    "epoch_seconds": "wall time of an epoch (train + test evaluation), seconds; index = epoch",
    "diverged": "1 if the training loss became NaN/inf (index = epoch it happened), else 0",
    "num_params": "number of parameters of the model",
    "train_seconds": "wall time of the training stage in this process, seconds",
    # receptive_field (cell-level, one row per conv/pool layer; layer = module name)
    "rf_r_max": "analytic receptive field of a layer's output, max over paths, pixels",
    "rf_r_min": "analytic receptive field of a layer's output, min over paths, pixels",
    "rf_jump": "effective stride of a layer's output in input pixels",
    "rf_unproductive": "1 if the r_min of the layer's input already covers the input size",
    "rf_border": "1 for the border layer (the first unproductive layer), else 0",
}

DONE = "DONE"
ROWS = "rows.csv"
ARRAYS = "arrays.npz"


class SchemaError(ValueError):
    """A row that does not fit the schema (unknown column or metric, bad value)."""


def register_metric(name: str, description: str) -> None:
    """Declare a new metric name (snake_case) with its meaning and unit."""
    if not name.replace("_", "").isalnum() or name.lower() != name:
        raise SchemaError(f"metric names are snake_case, got {name!r}")
    if name in METRICS and METRICS[name] != description:
        raise SchemaError(f"metric {name!r} is already registered: {METRICS[name]}")
    METRICS[name] = description


def validate_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(rows):
        unknown = set(r) - set(COLUMNS)
        if unknown:
            raise SchemaError(f"row {i}: unknown column(s) {sorted(unknown)}; valid: {COLUMNS}")
        metric = r.get("metric")
        if metric not in METRICS:
            raise SchemaError(
                f"row {i}: unknown metric {metric!r}; register it with "
                f"landscape.results.register_metric. Known: {', '.join(sorted(METRICS))}"
            )
        value = r.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy scalars, 0-d tensors
            except (TypeError, ValueError):
                raise SchemaError(f"row {i} ({metric}): value must be a number, got {value!r}")
        out.append({**r, "value": float(value)})
    return out


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> DataFrame with every schema column, in order, with the schema dtypes."""
    df = pd.DataFrame(list(rows))
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = pd.NA
    df = df[COLUMNS]
    for c, t in DTYPES.items():
        col = df[c]
        if t == "boolean":
            col = col.astype(object).map(_to_bool)
        elif t == "float64":
            col = pd.to_numeric(col.astype(object).where(col.notna(), None), errors="raise")
        df[c] = col.astype(t)
    return df


def _to_bool(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return pd.NA
    if isinstance(v, str):
        return {"true": True, "false": False}.get(v.strip().lower(), pd.NA)
    return bool(v)


# ---------------------------------------------------------------------------------------------
def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "stages" / stage


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
    atomic_write_text(d / ROWS, buf.getvalue())
    (d / "FAILED").unlink(missing_ok=True)
    atomic_write_json(d / DONE, {"stage": stage, "status": status, "rows": len(rows),
                                 "finished_unix": time.time(), **(info or {})})
    return d


def write_failure(run_dir: Path, stage: str, message: str) -> None:
    """Record why a stage failed (shown by status tools); no DONE marker is written."""
    atomic_write_text(stage_dir(run_dir, stage) / "FAILED", message)


def read_failure(run_dir: Path, stage: str) -> str | None:
    """The reason a stage unit failed (the last line of its traceback), or None."""
    path = stage_dir(run_dir, stage) / "FAILED"
    if not path.is_file():
        return None
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "failed (empty FAILED file)"


def failures(root: str | Path) -> pd.DataFrame:
    """Every failed stage unit under ``root``: ``run_id`` (the cell name for cell-level units),
    ``unit`` and ``reason``. Failed units have no rows, so :func:`load` cannot show them."""
    root = Path(root)
    markers = [*root.glob("*/seed=*/stages/*/FAILED"), *root.glob("*/cell/stages/*/FAILED")]
    rows = []
    for path in sorted(markers):
        run_dir = path.parents[2]
        rows.append({"run_id": run_dir.relative_to(root).as_posix().removesuffix("/cell"),
                     "unit": path.parent.name, "reason": read_failure(run_dir, path.parent.name)})
    return pd.DataFrame(rows, columns=["run_id", "unit", "reason"])


def read_stage(run_dir: Path, stage: str) -> pd.DataFrame:
    return _read_rows(stage_dir(run_dir, stage) / ROWS)


def _read_rows(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={c: ("string" if t in ("string", "boolean") else None)
                                  for c, t in DTYPES.items()}, keep_default_na=True)
    return to_frame(df.to_dict("records"))


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
