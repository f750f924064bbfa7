"""The stages of one run, in order, each skipped when its DONE marker exists.

A stage is a function ``fn(ctx: RunContext) -> list[dict]`` returning rows without identity
columns (``metric``, ``value`` and optional ``index``/``layer``/...); the pipeline adds the
identity columns and the stage name, writes the rows atomically, then the marker. New stages
(pruning, Hessian, CKA, importance maps) register with :func:`register_stage`; this is the
only module that knows their order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
import traceback
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Callable, Optional

import pandas as pd
import torch

from landscape import results
from landscape.config import RunConfig, from_dict, identity_dict
from landscape.data import DatasetBundle, load_dataset
from landscape.device import (
    DeviceSettings, configure_backends, device_settings, full_precision, resolve_device,
)
from landscape.models import RFNet, create_model
from landscape.receptive_field import max_receptive_field, receptive_field_table
from landscape.runs import RunPaths, run_paths
from landscape.stages.cka import cka_rows
from landscape.stages.cka import validate as validate_cka
from landscape.stages.hessian import hessian_stage
from landscape.stages.hessian import variants as hessian_variants
from landscape.stages.importance import importance_stage
from landscape.stages.prune import finetune_stage, finetune_variants, prune_stage, prune_variants
from landscape.stages.importance import variants as importance_variants
from landscape.storage import atomic_write_json, load_checkpoint
from landscape.train import derive_seed, seed_everything, train_model

log = logging.getLogger("landscape")


@dataclass
class RunContext:
    """Everything a stage needs; data and identity are computed once, on first use."""

    cfg: RunConfig
    paths: RunPaths
    settings: DeviceSettings

    arrays: dict[str, Any] = field(default_factory=dict)

    def save_array(self, name: str, array: Any) -> None:
        """Keep an array (e.g. an importance map) to be written with the stage's rows."""
        self.arrays[name] = array

    def save_array_dict(self, arrays: dict[str, Any]) -> None:
        self.arrays.update(arrays)

    def pop_arrays(self) -> dict[str, Any]:
        out, self.arrays = self.arrays, {}
        return out

    @cached_property
    def data(self) -> DatasetBundle:
        return load_dataset(self.cfg.data)

    def build_model(self) -> RFNet:
        """A freshly initialised model, seeded from the run seed (the same init every time)."""
        m = self.cfg.model
        with torch.random.fork_rng(devices=[]):
            seed_everything(derive_seed(self.cfg.seed, 0))
            return create_model(
                m.name, num_classes=self.data.num_classes, in_channels=self.data.in_channels,
                pool_level=m.pool_level, width=m.width, pool_kernel=m.pool_kernel,
                pool_stride=m.pool_stride, pool_padding=m.pool_padding,
                input_size=self.data.image_size,
            )

    def load_model(self, which: str = "final") -> RFNet:
        """The model with the weights of checkpoint ``which`` ("init" or "final")."""
        model = self.build_model()
        state = load_checkpoint(self.paths.checkpoints / f"{which}.pt")
        model.load_state_dict(state["model"])
        return model.to(self.settings.device)

    @cached_property
    def identity(self) -> dict[str, Any]:
        """Identity columns of this run's rows (DESIGN.md §4)."""
        m = self.cfg.model
        model = self.build_model()
        spec = model.pool_spec
        return {
            "run_id": self.paths.run_id, "arch": m.name, "dataset": self.cfg.data.name,
            "pool_level": m.pool_level, "pool_kernel": spec.kernel, "pool_stride": spec.stride,
            "pool_padding": spec.padding, "receptive_field": max_receptive_field(model),
            "width": float(m.width), "seed": self.cfg.seed,
        }

    @property
    def cell_identity(self) -> dict[str, Any]:
        """Identity columns of cell-level rows: no seed, run_id = the cell folder name."""
        return {**self.identity, "run_id": self.paths.cell.name, "seed": None}


def _always(cfg: RunConfig) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """A step of a run. ``fn(ctx, **params)`` returns rows without identity columns.

    ``variants(cfg)`` expands the stage into independent, separately-marked units, e.g. one
    per (criterion, rate): a list of ``(suffix, params)``; the unit is named
    ``<name>_<suffix>``. Rows get ``stage=<name>`` unless they set ``stage`` themselves.
    """

    name: str
    fn: Callable[..., list[dict]]
    enabled: Callable[[RunConfig], bool] = _always
    needs_trained: bool = True  # skipped unless training finished without diverging
    variants: Optional[Callable[[RunConfig], list[tuple[str, dict]]]] = None
    trains: bool = False  # a training stage may use TF32 on CUDA; the others measure without

    def units(self, cfg: RunConfig) -> list[tuple[str, dict]]:
        if self.variants is None:
            return [(self.name, {})]
        return [(f"{self.name}_{suffix}", params) for suffix, params in self.variants(cfg)]


STAGES: list[Stage] = []


def register_stage(stage: Stage, *, after: Optional[str] = None) -> None:
    """Add a stage at the end, or right after the stage named ``after``."""
    if any(s.name == stage.name for s in STAGES):
        raise ValueError(f"stage '{stage.name}' is already registered")
    if after is None:
        STAGES.append(stage)
        return
    names = [s.name for s in STAGES]
    if after not in names:
        raise ValueError(f"unknown stage '{after}'; registered: {', '.join(names)}")
    STAGES.insert(names.index(after) + 1, stage)


# ---------------------------------------------------------------------------------------------
def train_stage(ctx: RunContext) -> list[dict]:
    model = ctx.build_model()
    t0 = time.perf_counter()
    outcome = train_model(
        model, ctx.data.train, ctx.data.test, ctx.cfg.train, seed=ctx.cfg.seed,
        settings=ctx.settings, checkpoint_dir=ctx.paths.checkpoints,
        num_workers=ctx.cfg.data.num_workers, progress=ctx.cfg.progress,
    )
    rows: list[dict] = []
    for r in outcome.history:
        for metric in ("train_loss", "train_acc", "test_loss", "test_acc", "learning_rate",
                       "epoch_seconds"):
            rows.append({"metric": metric, "value": getattr(r, metric), "index": r.epoch})
    rows.append({"metric": "diverged", "value": float(outcome.diverged),
                 "index": outcome.diverged_epoch})
    rows.append({"metric": "num_params", "value": sum(p.numel() for p in model.parameters())})
    rows.append({"metric": "train_seconds", "value": time.perf_counter() - t0})
    if outcome.diverged:
        log.warning("run %s diverged at epoch %d (non-finite training loss)",
                    ctx.paths.run_id, outcome.diverged_epoch)
    return rows


register_stage(Stage("train", train_stage, needs_trained=False, trains=True))
register_stage(Stage("prune", prune_stage, enabled=lambda c: c.prune.enabled,
                     variants=prune_variants))
register_stage(Stage("finetune", finetune_stage,
                     enabled=lambda c: c.prune.enabled and c.prune.finetune,
                     variants=finetune_variants, trains=True))
register_stage(Stage("hessian", hessian_stage, enabled=lambda c: c.hessian.enabled,
                     variants=hessian_variants))
register_stage(Stage("importance", importance_stage, enabled=lambda c: c.importance.enabled,
                     variants=importance_variants))


# ---------------------------------------------------------------------------------------------
CELL_DIR = "cell"  # cell-level stages live in <cell>/cell/stages/<stage>/


def receptive_field_rows(ctx: RunContext) -> list[dict]:
    """The analytic RF table of the cell's model at its input size, as tidy rows."""
    table = receptive_field_table(ctx.build_model(), ctx.data.image_size)
    rows = []
    for r in table.itertuples():
        values = {"rf_r_max": r.r_max, "rf_r_min": r.r_min, "rf_jump": r.jump,
                  "rf_unproductive": r.unproductive, "rf_border": r.border}
        rows += [{"metric": k, "value": float(v), "layer": r.layer,
                  "note": f"input_size={ctx.data.image_size}"}
                 for k, v in values.items() if not pd.isna(v)]  # global layers: no RF
    return rows


def ensure_cell_stage(ctx: RunContext, name: str, fn: Callable[[RunContext], list[dict]]) -> bool:
    """Run a cell-level stage once per cell (the first seed to get here writes it)."""
    cell_dir = ctx.paths.cell / CELL_DIR
    if results.is_done(cell_dir, name):
        return False
    rows = [{**ctx.cell_identity, "stage": name, **r} for r in fn(ctx)]
    results.write_stage(cell_dir, name, rows)
    return True


# ---------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    run_dir: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    status: str = "ok"


def run(cfg: RunConfig) -> RunSummary:
    """Run every enabled stage of one run (cell + seed) that is not done yet."""
    paths = run_paths(cfg)
    if cfg.num_threads is not None:
        if cfg.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {cfg.num_threads}")
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    settings = device_settings(device, amp=cfg.train.amp, channels_last=cfg.train.channels_last)
    configure_backends(device, deterministic=cfg.train.deterministic)
    ctx = RunContext(cfg, paths, settings)
    # Validate every stage's settings and the model/input combination before touching disk.
    plan = [(stage, unit, params) for stage in STAGES if stage.enabled(cfg)
            for unit, params in stage.units(cfg)]
    ctx.identity  # noqa: B018  (builds the model: an impossible pool fails here)
    paths.run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.cell / "cell.json",
                      {"cell": paths.cell.name, "identity": identity_dict(cfg)})
    atomic_write_json(paths.run / "config.json", asdict(cfg))
    summary = RunSummary(run_dir=str(paths.run))
    if ensure_cell_stage(ctx, "receptive_field", receptive_field_rows):
        summary.ran.append("receptive_field")
    for stage, unit, params in plan:
        if results.is_done(paths.run, unit):
            summary.skipped.append(unit)
            continue
        train_done = results.read_done(paths.run, "train") or {}
        if stage.needs_trained and train_done.get("status") != "ok":
            summary.skipped.append(unit)
            continue
        log.info("%s: running stage %s", paths.run_id, unit)
        t0 = time.perf_counter()
        try:
            with contextlib.nullcontext() if stage.trains else full_precision(device):
                rows = stage.fn(ctx, **params)
            diverged = any(r["metric"] == "diverged" and r["value"] for r in rows)
            status = "diverged" if diverged else "ok"
            results.write_stage(
                paths.run, unit, [{**ctx.identity, "stage": stage.name, **r} for r in rows],
                status=status, info={"seconds": time.perf_counter() - t0, **params},
                arrays=ctx.pop_arrays(),
            )
        except Exception:
            results.write_failure(paths.run, unit, traceback.format_exc())
            summary.status = "failed"
            raise
        summary.ran.append(unit)
        if status != "ok":
            summary.status = status
    if not summary.ran:
        log.info("%s: nothing to do, every stage is done (%s)", paths.run_id,
                 ", ".join(summary.skipped))
    return summary


# ---------------------------------------------------------------------------------------------
@dataclass
class CellSummary:
    cell_dir: str
    seeds: list[int]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def finished_seeds(cell_dir: Path) -> dict[int, RunConfig]:
    """Seed -> config of the runs of a cell whose training finished without diverging."""
    out = {}
    for cfg_file in sorted(Path(cell_dir).glob("seed=*/config.json")):
        done = results.read_done(cfg_file.parent, "train") or {}
        if done.get("status") == "ok":
            cfg = from_dict(RunConfig, json.loads(cfg_file.read_text()))
            out[cfg.seed] = cfg
    return out


def run_cell(cell_dir: Path, *, overrides: Optional[RunConfig] = None) -> CellSummary:
    """Cell-level stages (CKA between seeds) over the seeds of ``cell_dir`` that finished.

    A stage is redone when more seeds have finished since it was written. The analysis settings
    come from ``overrides`` (e.g. the command line) or else from the runs' saved configs.
    """
    seeds = finished_seeds(cell_dir)
    summary = CellSummary(cell_dir=str(cell_dir), seeds=sorted(seeds))
    if not seeds:
        return summary
    base = seeds[min(seeds)]
    if overrides is not None:
        base = dataclasses.replace(base, cka=overrides.cka, device=overrides.device,
                                   results_root=base.results_root)
    if not base.cka.enabled or len(seeds) < 1:
        return summary
    validate_cka(base.cka)
    device = resolve_device(base.device)
    settings = device_settings(device, amp=False, channels_last=False)
    contexts = {s: RunContext(dataclasses.replace(base, seed=s), run_paths(
        dataclasses.replace(base, seed=s)), settings) for s in seeds}
    first = contexts[min(seeds)]
    cell_stage_dir = first.paths.cell / CELL_DIR
    for checkpoint in base.cka.checkpoints:
        unit = f"cka_{checkpoint}"
        done = results.read_done(cell_stage_dir, unit) or {}
        if done.get("seeds") == sorted(seeds):
            summary.skipped.append(unit)
            continue
        log.info("%s: running cell stage %s over seeds %s", first.paths.cell.name, unit,
                 sorted(seeds))
        t0 = time.perf_counter()
        test = first.data.test
        n = min(base.cka.n_inputs, len(test))
        inputs = torch.stack([test[i][0] for i in range(n)])
        models = {s: c.load_model(checkpoint) for s, c in contexts.items()}
        with full_precision(device):
            rows = [{**first.cell_identity, "stage": unit, **r}
                    for r in cka_rows(models, inputs, base.cka, device)]
        results.write_stage(cell_stage_dir, unit, rows, info={
            "seeds": sorted(seeds), "seconds": time.perf_counter() - t0})
        summary.ran.append(unit)
    return summary


def run_cells(root: Path, *, overrides: Optional[RunConfig] = None) -> list[CellSummary]:
    """:func:`run_cell` for every cell folder under ``root``."""
    return [run_cell(c.parent, overrides=overrides)
            for c in sorted(Path(root).glob("*/cell.json"))]
