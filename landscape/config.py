"""Dataclass schemas of a run. Core code receives these (never a Hydra DictConfig).

A *cell* is every identity field except the seed; a *run* is (cell, seed). Fields marked
``identity=False`` say where or how to compute, not what: they are left out of the run hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional, get_type_hints

from landscape.data.registry import DataConfig
from landscape.stages.cka import CKAConfig
from landscape.stages.hessian import HessianConfig
from landscape.stages.importance import ImportanceConfig
from landscape.stages.prune import PruneConfig
from landscape.train import TrainConfig

NOT_IDENTITY = {"identity": False}


@dataclass
class ModelConfig:
    name: str = "resnet18"
    width: float = 1.0
    pool_level: int = 0
    # Explicit overrides of the level preset (e.g. a kernel-only sweep at fixed stride).
    pool_kernel: Optional[int] = None
    pool_stride: Optional[int] = None
    pool_padding: Optional[int] = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    # Analysis stages: their settings are not part of the run's identity; each stage unit
    # (e.g. importance at init) is marked done separately.
    prune: PruneConfig = field(default_factory=PruneConfig, metadata=NOT_IDENTITY)
    hessian: HessianConfig = field(default_factory=HessianConfig, metadata=NOT_IDENTITY)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig, metadata=NOT_IDENTITY)
    cka: CKAConfig = field(default_factory=CKAConfig, metadata=NOT_IDENTITY)  # cell-level
    results_root: str = field(default="results", metadata=NOT_IDENTITY)
    device: str = field(default="auto", metadata=NOT_IDENTITY)
    # CPU threads for this process (None = torch's default). Set it when several runs share
    # a machine: oversubscribed OpenMP threads slow a step down by an order of magnitude.
    num_threads: Optional[int] = field(default=None, metadata=NOT_IDENTITY)
    progress: bool = field(default=True, metadata=NOT_IDENTITY)
    report: bool = field(default=True, metadata=NOT_IDENTITY)  # write the report after a grid


@dataclass
class RFSweepConfig:
    """``landscape-rf``: the analytic RF of one architecture at several pool levels."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    levels: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])


# DataConfig fields that say where/how to load, not what data.
DATA_NOT_IDENTITY = ("root", "download", "num_workers")


def identity_dict(cfg: Any, *, _prefix: str = "") -> dict[str, Any]:
    """Flat ``{"model.name": ..., ...}`` of identity fields whose value differs from the default.

    Omitting defaults (as OpenLTH does) keeps old run hashes valid when a new field with a
    default is added. Floats are normalised so that ``1`` and ``1.0`` hash alike.
    """
    out: dict[str, Any] = {}
    default = type(cfg)()
    for f in fields(cfg):
        if not f.metadata.get("identity", True):
            continue
        if isinstance(cfg, DataConfig) and f.name in DATA_NOT_IDENTITY:
            continue
        value = getattr(cfg, f.name)
        key = f"{_prefix}{f.name}"
        if is_dataclass(value):
            out.update(identity_dict(value, _prefix=f"{key}."))
            continue
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(
            getattr(default, f.name), float
        ):
            value = float(value)
        if value != getattr(default, f.name):
            out[key] = value
    return out


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output; unknown keys
    are an error naming the field, missing keys take their defaults."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; valid: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        t = hints[k]
        kwargs[k] = from_dict(t, v) if is_dataclass(t) and isinstance(v, dict) else v
    return cls(**kwargs)
