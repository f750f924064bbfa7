"""The records of a results root besides stage units: each cell's identity, each run's config,
and the submissions of grids (which Slurm job holds which run)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from landscape.results.layout import (
    CELL_RECORD, DONE, RUN_CONFIG, SUBMISSIONS, RunPaths, results_folder,
)
from landscape.results.integrity import read_done
from landscape.results.store import _markers, jsonable
from landscape.storage import atomic_write_json


def write_run_records(paths: RunPaths, identity_fields: dict[str, Any],
                      config: dict[str, Any]) -> None:
    """``cell.json`` (the cell's identity fields) and the run's ``config.json``; a file that
    already holds this content is left untouched (a finished run rerun writes nothing)."""
    _write_if_changed(paths.cell / CELL_RECORD, {"cell": paths.cell.name,
                                                 "identity": identity_fields})
    _write_if_changed(paths.run_dir / RUN_CONFIG, config)


def _write_if_changed(path: Path, obj: dict[str, Any]) -> None:
    try:
        if json.loads(path.read_text()) == jsonable(obj):
            return
    except (OSError, ValueError):
        pass  # absent or unreadable: written anew
    atomic_write_json(path, obj)


def cell_names(root: str | Path) -> list[str]:
    """Names of the cell folders under ``root`` (those with a ``cell.json``), sorted."""
    return sorted(p.parent.name for p in Path(root).glob(f"*/{CELL_RECORD}"))


def run_configs(root: str | Path, cell: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """``run_id -> stored config`` (as written by :func:`write_run_records`) of every run under
    ``root`` (or of one cell), in folder order. Unreadable files are left out with a warning."""
    root = Path(root)
    out = {}
    for path in sorted(root.glob(f"{cell or '*'}/seed=*/{RUN_CONFIG}")):
        run_id = path.parent.relative_to(root).as_posix()
        try:
            out[run_id] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            warnings.warn(f"{run_id}: unreadable {RUN_CONFIG} ({e}); left out", stacklevel=2)
    return out


POOL_KEYS = ("model.pool_level", "model.pool_kernel", "model.pool_stride", "model.pool_padding")
GRID_KEYS = ("model.name", "data.name", "model.width")
# The input size and its protocol: study axes with their own row columns (image_size, resize),
# not variants.
SIZE_KEYS = ("data.image_size", "data.resize", "data.down_size", "data.object_size")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cell_variants(root: str | Path, defaults: Optional[Mapping[str, Any]] = None
                  ) -> dict[str, str]:
    """cell -> how it differs from the other cells of its (arch, dataset, width) group in
    identity fields other than the RF pool and the input size (``data.image_size`` and its
    protocol: the ``image_size`` / ``resize`` columns), e.g. ``"train.lr=0.01"`` ("" when it
    differs only in those). With ``defaults`` (the config's defaults, nested as stored), a
    field at its default is left out of the label (the paper's model beside a no-skips one is
    ``""``, not ``"model.dilation=None, model.skips=True, ..."``); distinct cells still get
    distinct labels. Cells with different labels must not be pooled as seeds of one RF level
    (nor are cells of one label: every grouping of ``analysis`` is per cell)."""
    root = Path(root)
    ident: dict[str, set[str]] = {}
    for name in cell_names(root):
        try:
            ident[name] = set(json.loads((root / name / CELL_RECORD).read_text())["identity"])
        except (OSError, ValueError, KeyError):
            warnings.warn(f"{name}: unreadable {CELL_RECORD}; its label may be incomplete",
                          stacklevel=2)
    configs: dict[str, dict[str, Any]] = {}
    for run_id, cfg in run_configs(root).items():
        configs.setdefault(run_id.split("/", 1)[0], _flat(cfg))
    keys = sorted(set().union(*ident.values()) - set(POOL_KEYS) - set(GRID_KEYS)
                  - set(SIZE_KEYS) - {"seed"}) if ident else []
    groups: dict[tuple, list[str]] = {}
    for cell, flat in configs.items():
        groups.setdefault(tuple(str(flat.get(k)) for k in GRID_KEYS), []).append(cell)
    default = _flat(dict(defaults)) if defaults is not None else {}
    out = {}
    for cells in groups.values():
        varying = [k for k in keys if len({str(configs[c].get(k)) for c in cells}) > 1]
        for c in cells:
            out[c] = ", ".join(f"{k}={configs[c].get(k)}" for k in varying
                               if k not in default or str(configs[c].get(k)) != str(default[k]))
    return out


def empty_units(root: str | Path) -> pd.DataFrame:
    """Every stage unit under ``root`` done with no rows (e.g. ``probes_border`` of a run
    without an unproductive probed layer): ``run_id``, ``unit``. :func:`load` has nothing of
    them, so a report would count them missing."""
    root = results_folder(root)
    rows = [{"run_id": run_id, "unit": unit} for out_dir, unit, run_id in _markers(root, DONE)
            if (done := read_done(out_dir, unit)) is not None and done.get("status") == "ok"
            and done.get("rows") == 0]
    return pd.DataFrame(rows, columns=["run_id", "unit"])


def trained_seeds(cell_dir: str | Path) -> list[int]:
    """Seeds of a cell whose training finished without diverging, sorted."""
    seeds = []
    for run in Path(cell_dir).glob("seed=*"):
        if (read_done(run, "train") or {}).get("status") == "ok":
            seeds.append(int(run.name.split("=", 1)[1]))
    return sorted(seeds)


def record_submission(root: Path, backend: str, runs: Sequence[tuple[str, Optional[str], dict]],
                      cell_job_id: Optional[str] = None, cells: Sequence[str] = ()) -> None:
    """Append one submission: ``runs`` holds (run_id, Slurm job id or None, config as a dict)."""
    path = Path(root) / SUBMISSIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"unix": time.time(), "backend": backend, "cell_job_id": cell_job_id,
             "cells": list(cells),
             "runs": [{"run_id": r, "job_id": j, "config": c} for r, j, c in runs]}
    with path.open("a") as f:  # one line per submission
        f.write(json.dumps(entry, default=str) + "\n")


def read_submissions(root: str | Path) -> list[dict[str, Any]]:
    path = Path(root) / SUBMISSIONS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
