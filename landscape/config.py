"""Dataclass schemas of a run, assembled from the stages' own config dataclasses. Core code
receives these (never a Hydra DictConfig).

A *cell* is every identity field except the seed; a *run* is (cell, seed). Fields marked
``identity: False`` say where or how to compute, not what: they are left out of the run hash
(``landscape.identity``). The analysis stages' settings are not part of a run's identity;
each stage unit is marked done on its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

from landscape.data.registry import DataConfig
from landscape.identity import NOT_IDENTITY, identity_dict
from landscape.stages.cka import CKAConfig
from landscape.stages.connectivity import ConnectivityConfig
from landscape.stages.hessian import HessianConfig
from landscape.stages.imp import ImpConfig
from landscape.stages.importance import ImportanceConfig
from landscape.stages.probes import ProbesConfig
from landscape.stages.resolution import ResolutionConfig
from landscape.stages.prune import PruneConfig
from landscape.stages.sharpness import SharpnessConfig
from landscape.stages.base import SAVED, expand_checkpoints
from landscape.stages.slices import SliceConfig
from landscape.train import TrainConfig

__all__ = ["ModelConfig", "RFSweepConfig", "RunConfig", "check_known_keys", "describe_type",
           "free_form_fields", "from_dict", "identity_dict", "stage_config"]


@dataclass
class ModelConfig:
    name: str = "resnet18"
    width: float = 1.0
    pool_level: int = 0
    # Explicit overrides of the level preset (e.g. a kernel-only sweep at fixed stride).
    pool_kernel: Optional[int] = None
    pool_stride: Optional[int] = None
    pool_padding: Optional[int] = None
    # The architecture's knobs (landscape.models.spec; None / defaults: the paper's model).
    stem: str = "cifar"  # resnet: cifar (3x3 s1) | imagenet (7x7 s2 + 3x3/2 max-pool)
    stem_kernel: Optional[int] = None
    stem_stride: Optional[int] = None
    stem_channels: Optional[int] = None
    stage_strides: Optional[list[int]] = None  # one per stage (vgg: per pool between stages)
    dilation: Optional[list[int]] = None  # one per stage
    skips: bool = True  # resnet: false removes the identity additions
    projection: str = "keep"  # with skips=false: keep | drop the 1x1 projection shortcuts
    depths: Optional[list[int]] = None  # blocks (resnet) / convs (vgg) per stage
    widths: Optional[list[int]] = None  # channels per stage at width 1
    # A local state_dict file the model starts from (never downloaded; hashed by content).
    weights: Optional[str] = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    prune: PruneConfig = field(default_factory=PruneConfig, metadata=NOT_IDENTITY)
    imp: ImpConfig = field(default_factory=ImpConfig, metadata=NOT_IDENTITY)
    hessian: HessianConfig = field(default_factory=HessianConfig, metadata=NOT_IDENTITY)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig, metadata=NOT_IDENTITY)
    slice: SliceConfig = field(default_factory=SliceConfig, metadata=NOT_IDENTITY)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig, metadata=NOT_IDENTITY)
    probes: ProbesConfig = field(default_factory=ProbesConfig, metadata=NOT_IDENTITY)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig,
                                         metadata=NOT_IDENTITY)
    cka: CKAConfig = field(default_factory=CKAConfig, metadata=NOT_IDENTITY)  # cell-level
    connectivity: ConnectivityConfig = field(default_factory=ConnectivityConfig,
                                             metadata=NOT_IDENTITY)  # cell-level
    # Modules to import before anything runs: user stages, models, datasets, criteria register
    # themselves there. Reading a results folder (landscape-status) never imports them.
    imports: list[str] = field(default_factory=list, metadata=NOT_IDENTITY)
    # Settings of user stages, by stage name (each a dict of its ``config_class``'s fields):
    # ``stages.my_stage.threshold=0.5`` on the command line.
    stages: dict[str, Any] = field(default_factory=dict, metadata=NOT_IDENTITY)
    results_root: str = field(default="results", metadata=NOT_IDENTITY)
    device: str = field(default="auto", metadata=NOT_IDENTITY)
    # CPU threads for this process (None = torch's default). Set it when several runs share
    # a machine: oversubscribed OpenMP threads slow a step down by an order of magnitude.
    num_threads: Optional[int] = field(default=None, metadata=NOT_IDENTITY)
    progress: bool = field(default=True, metadata=NOT_IDENTITY)
    report: bool = field(default=True, metadata=NOT_IDENTITY)  # write the report after a grid


@dataclass
class RFSweepConfig:
    """``landscape-rf``: the analytic RF of one architecture: the project's own at several
    pool levels, or any ``torchvision:<name>``, ``timm:<name>`` or ``<module>:<function>``
    model as it is (``model.name``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # RF-pool levels of the project's own architectures (None: 0..4); not for other models.
    levels: Optional[list[int]] = None
    input_size: Optional[int] = None  # pixels; None: the data's image size
    num_classes: Optional[int] = None  # None: the data's (torchvision/timm: the data's too)
    layers: bool = False  # the per-layer table (always shown for torchvision/timm/user models)
    refine: bool = False  # refinement proposals where the model is not fully utilised
    out: Optional[str] = None  # folder for rf_layers.csv, rf_sweep.csv, rf_refine.csv, drawings
    draw: Optional[str] = None  # png | svg | pdf: the RFA-style drawing per model (needs out)
    convention: str = "rfa"  # underutilised: r_min > n ("rfa") or r_min >= n ("paper")
    se_gates: str = "scale"  # "scale": SE gates add no spatial path; "global": they do
    imports: list[str] = field(default_factory=list)  # modules that register user models


def stage_config(cfg: RunConfig, stage: Any) -> Any:
    """The settings of ``stage``: the RunConfig field it names (``config_field``), else its
    ``config_class`` filled from ``cfg.stages[stage.name]``, else None (no settings). A
    ``checkpoints`` list that names ``saved`` gets every epoch of ``train.save_epochs``
    instead (:func:`~landscape.stages.base.expand_checkpoints`)."""
    if stage.config_field is not None:
        if not hasattr(cfg, stage.config_field):
            raise ValueError(f"stage {stage.name!r} reads RunConfig.{stage.config_field}, which "
                             f"does not exist; valid: {[f.name for f in fields(cfg)]}")
        return with_saved_epochs(without_repeats(getattr(cfg, stage.config_field)),
                                 stage.config_field, cfg, stage.checkpoint_fields,
                                 stage.versus_final_fields)
    if stage.config_class is not None:
        try:
            config = without_repeats(from_dict(stage.config_class,
                                               dict(cfg.stages.get(stage.name) or {})))
        except ValueError as e:
            raise ValueError(f"stages.{stage.name}: {e}") from None
        return with_saved_epochs(config, f"stages.{stage.name}", cfg, stage.checkpoint_fields,
                                 stage.versus_final_fields)
    return None


def with_saved_epochs(config: Any, group: str, cfg: RunConfig,
                      names: tuple[str, ...] = ("checkpoints",),
                      versus_final: tuple[str, ...] = ()) -> Any:
    """``config`` with ``saved`` in its checkpoint lists (the fields ``names``) expanded to
    the saved epochs; those of the fields ``versus_final`` (each compared with the final
    weights) without the last epoch."""
    if not is_dataclass(config):
        return config
    changes = {}
    for name in names:
        checkpoints = getattr(config, name, None)
        if isinstance(checkpoints, list) and SAVED in checkpoints:
            changes[name] = expand_checkpoints(f"{group}.{name}", checkpoints, cfg.train,
                                               versus_final=name in versus_final)
    return dataclasses.replace(config, **changes) if changes else config


def without_repeats(config: Any) -> Any:
    """A stage config whose list settings hold each value once, in first-seen order
    (``sharpness.kinds=[adaptive,adaptive]`` measures, and writes, one row, as a repeated
    rate or checkpoint makes one unit): a repeated value is one setting, never two samples."""
    if not is_dataclass(config):
        return config
    changes = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, list):
            seen: dict[str, Any] = {}
            for v in value:
                seen.setdefault(json.dumps(v, sort_keys=True, default=str), v)
            if len(seen) < len(value):
                changes[f.name] = list(seen.values())
    return dataclasses.replace(config, **changes) if changes else config


def check_known_keys(data: Any, schema: type, prefix: str = "") -> None:
    """Every key of the nested dict ``data`` must be a field of the dataclass ``schema``
    (recursively; free-form dict fields such as ``stages`` or ``prune.options`` take any key).
    Hydra's ``+key=value`` adds keys that ``OmegaConf.to_object`` would silently drop."""
    hints = get_type_hints(schema)
    names = [f.name for f in fields(schema)]
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else "."
            where = f" of {prefix.rstrip('.')}" if prefix else ""
            raise ValueError(f"unknown config key '{prefix}{key}'{hint} Valid keys{where}: "
                             f"{', '.join(names)}")
        if is_dataclass(hints[key]) and isinstance(value, dict):
            check_known_keys(value, hints[key], f"{prefix}{key}.")


def free_form_fields(schema: type, prefix: str = "") -> list[str]:
    """Dotted paths of the free-form dict fields of the dataclass ``schema`` (recursively), such
    as ``stages`` and ``prune.options``: they take any key, on the command line without ``+``."""
    hints = get_type_hints(schema)
    paths = []
    for f in fields(schema):
        t = hints[f.name]
        if is_dataclass(t):
            paths += free_form_fields(t, f"{prefix}{f.name}.")
        elif t is dict or get_origin(t) is dict:
            paths.append(prefix + f.name)
    return paths


_TYPE_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
               float: ("a number", "numbers"), str: ("a string", "strings")}


def describe_type(t: Any, plural: bool = False) -> str:
    """A field's type in words, as a user writes the value (``Optional[int]``: "an integer or
    null"; ``list[float]``: "a list [...] of numbers")."""
    origin, args = get_origin(t), get_args(t)
    if origin is Union:
        kinds = [describe_type(a, plural) for a in args if a is not type(None)]
        return " or ".join(kinds + (["null"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if t in (list, tuple) or origin in (list, tuple):
        items = [a for a in args if a is not Ellipsis]
        return "lists" if plural else \
            "a list [...]" + (f" of {describe_type(items[0], True)}" if items else "")
    if t is dict or origin is dict:
        return "mappings" if plural else "a mapping {key: value}"
    if t in _TYPE_WORDS:
        return _TYPE_WORDS[t][plural]
    return getattr(t, "__name__", str(t))


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
