"""The stage protocol: what a stage declares, what it may ask of its context, and the registry.

A stage is one module under ``landscape/stages/`` (or a user's module) with one class::

    @register_stage
    class MyStage(Stage):
        name = "my_stage"          # row label and unit-name prefix
        level = "run"              # "run": once per (cell, seed); "cell": once per cell
        config_class = MyConfig    # its settings, from RunConfig.stages["my_stage"]
                                   # (built-in stages name a RunConfig field: config_field)

        def units(self, config):   # independent, separately marked units
            return [Unit("my_stage_final", {"checkpoint": "final"})]

        def run(self, ctx, config, unit):  # -> rows (or Output(rows, arrays))
            model = ctx.load_model(unit.params["checkpoint"])
            return [{"metric": "my_metric", "value": ...}]

The pipeline orders and iterates the registered stages, skips units whose DONE marker exists,
adds the identity columns to the rows and writes them; the status command and the report take
their stage lists from this registry. Stages type against the context protocols below.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
from torch import nn

from landscape import results
from landscape.data.registry import DatasetBundle
from landscape.data.resident import ResidentBundle
from landscape.device import DeviceSettings
from landscape.identity import RunIdentity
from landscape.models.registry import has_parameter_caches, is_builtin
from landscape.registry import Registry
from landscape.results.layout import CELL_RECORD
from landscape.stages.checks import (  # noqa: F401  (the stages import them from here)
    PROTOCOLS, check_counts, check_number, check_protocol,
)
from landscape.stages.checkpoints import (  # noqa: F401  (the stages import them from here)
    CHECKPOINT_WORDS, CHECKPOINTS, SAVED, check_checkpoints, check_saved, checkpoint_epoch,
    checkpoint_epoch_number, expand_checkpoints, is_checkpoint,
)
from landscape.train import TrainConfig

LEVELS = ("run", "cell")

# How activations are read as maps: features-last tensors followed through the torch
# functions of a forward (views, splits and cats included) and from module to module
# (landscape.activations.Layouts). Recorded with the units of the stages that read
# activations (probes, saturation, CKA, importance).
LAYOUTS = "functions+views+modules"
_MODULES_ONLY = "modules"
# before: module outputs only ("modules"), then functions on 4-D maps only
# ("functions+modules": windows moved by views, MambaOut's split / cat and timm's
# LayerNorm2dNoBias were read as (N, C, H, W)); both read some channels-last maps wrong

# How the units of a stage that evaluates or differentiates the model at other parameters
# than its own in eval mode (Hessian, slices, sharpness, connectivity, pruned geometry) read
# a parameter-derived cache (timm's attention-bias tables): recomputed per call
# (landscape.models.caches); before 2026-12-07 the table of the first forward was kept
PARAMETER_CACHES = "per call"
_FIRST_FORWARD = "first forward"


def _model_name(out_dir: Path) -> Optional[str]:
    """The model of the unit under ``out_dir`` (a run folder or a cell's stage folder), from
    its cell record; None where the record is unreadable."""
    try:
        record = json.loads((Path(out_dir).parent / CELL_RECORD).read_text())
        return str(record["identity"]["model.name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _builtin_cell(out_dir: Path) -> bool:
    """Whether the unit under ``out_dir`` belongs to a built-in architecture: all its maps are
    (N, C, H, W), so every way of reading layouts read them right. False where the record is
    unreadable."""
    name = _model_name(out_dir)
    return name is not None and is_builtin(name)


def _caches_parameters(out_dir: Path) -> bool:
    """Whether the unit's model may cache a tensor derived from its parameters (True where
    its record is unreadable)."""
    name = _model_name(out_dir)
    return name is None or has_parameter_caches(name)


@dataclass(frozen=True)
class Unit:
    """One separately marked piece of a stage: ``name`` is its folder under ``stages/``,
    ``params`` the arguments :meth:`Stage.run` needs to compute it."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Output:
    """What a unit returns when it also saves arrays (e.g. masks, maps) beside its rows."""

    rows: list[dict[str, Any]]
    arrays: dict[str, Any] = field(default_factory=dict)


class RunContext(Protocol):
    """What a run-level stage may use. Rows get the identity columns from the pipeline."""

    identity: RunIdentity
    settings: DeviceSettings
    train: TrainConfig  # the run's training settings (batch sizes, CUDA paths)
    progress: bool
    num_workers: Optional[int]  # DataLoader workers (data.num_workers; None: by device)
    checkpoint_dir: Path  # where training writes init.pt, last.pt and final.pt
    scratch_dir: Path  # a unit's progress: <scratch_dir>/<stage>/<unit>/ (the checkpoints)

    @property
    def data(self) -> DatasetBundle: ...

    @property
    def resident(self) -> ResidentBundle:
        """:attr:`data` held on the device (``landscape.data.resident``)."""

    def data_at(self, image_size: int, *, same_protocol: bool = False) -> DatasetBundle:
        """The run's dataset loaded at another input size (``data.image_size=image_size``),
        resized directly (``data.resize=direct``) whatever the run's own protocol, or with
        the run's own ``data.resize`` (and its ``down_size`` / ``object_size``) when
        ``same_protocol``."""

    def data_path(self, recorded: Optional[str] = None) -> str:
        """``"resident"`` or ``"dataloader"``: ``data.loader`` resolved for this device."""

    def build_model(self) -> nn.Module:
        """The run's freshly initialised model (the same init every time), on the CPU."""

    def load_model(self, checkpoint: str) -> nn.Module:
        """The model with the weights of ``checkpoint`` (one of :data:`CHECKPOINTS`), on the
        device."""

    def read_arrays(self, unit: str) -> dict[str, np.ndarray]:
        """The arrays saved by a finished unit of this run (e.g. a prune unit's masks)."""


class CellContext(Protocol):
    """What a cell-level stage may use: the cell's identity (seed None) and its seeds."""

    identity: RunIdentity
    settings: DeviceSettings
    progress: bool
    seeds: Sequence[int]  # seeds whose training finished (all of them for needs_trained=False)
    scratch_dir: Path  # a unit's progress: <scratch_dir>/<stage>/<unit>/ (cell/checkpoints)

    @property
    def data(self) -> DatasetBundle: ...

    def build_model(self) -> nn.Module: ...

    def load_models(self, checkpoint: str) -> dict[int, nn.Module]:
        """seed -> model with the weights of ``checkpoint``, on the device."""


Result = Union[Sequence[Mapping[str, Any]], Output]


class Stage:
    """Base class of a stage; subclasses set the class attributes and override :meth:`run`."""

    name: ClassVar[str]
    level: ClassVar[str] = "run"
    config_field: ClassVar[Optional[str]] = None  # the RunConfig field with its settings
    # A user stage's settings instead: a dataclass filled from RunConfig.stages[name]
    config_class: ClassVar[Optional[type]] = None
    needs_trained: ClassVar[bool] = True  # runs only after training finished without diverging
    trains: ClassVar[bool] = False  # a training stage may use TF32 on CUDA; measurements do not
    # Config fields that only choose which units exist, not what a unit computes
    selects: ClassVar[tuple[str, ...]] = ("enabled", "checkpoints")
    # Config fields that list checkpoints: 'saved' in them is expanded to the saved epochs,
    # and each epoch_<n> must be one that train.save_epochs saves (checked before a run)
    checkpoint_fields: ClassVar[tuple[str, ...]] = ("checkpoints",)
    # Of those, the lists each compared with the final weights: 'saved' leaves out the last
    # epoch there (the final weights themselves)
    versus_final_fields: ClassVar[tuple[str, ...]] = ()
    # Reads activations as maps: its units record how their layouts were followed (LAYOUTS)
    reads_layouts: ClassVar[bool] = False
    # Evaluates or differentiates the model at other parameters than its own in eval mode:
    # its units record how parameter-derived caches were read (PARAMETER_CACHES)
    perturbs_parameters: ClassVar[bool] = False

    def enabled(self, config: Any) -> bool:
        """Whether the stage runs with these settings (default: ``config.enabled``)."""
        return bool(getattr(config, "enabled", True))

    def validate(self, config: Any) -> None:
        """Raise ValueError naming the field of a bad setting (called before any file is
        written)."""

    def validate_for(self, config: Any, identity: RunIdentity) -> None:
        """Checks that need the run's identity (its architecture, pool, input size); called
        after :meth:`validate`, before any file is written."""

    def validate_across(self, config: Any, enabled: Mapping[str, Any]) -> None:
        """Checks against the settings of the other enabled stages of the run (stage name ->
        its settings), e.g. a unit that reads another stage's arrays; called after
        :meth:`validate_for`, before any file is written."""

    def units(self, config: Any) -> list[Unit]:
        return [Unit(self.name)]

    def missing_outputs(self, paths: Any) -> Optional[str]:
        """For a done unit: why it must be recomputed although its rows exist (e.g. a
        checkpoint it wrote was deleted), or None. ``paths``: the run's ``RunPaths``."""
        return None

    def settings(self, config: Any) -> dict[str, Any]:
        """The settings that change a unit's result (recorded with it; a unit whose recorded
        settings differ is recomputed): the config's fields but those in ``selects``."""
        if config is None:
            return {}
        return {k: v for k, v in asdict(config).items() if k not in self.selects}

    def recorded_settings(self, config: Any) -> dict[str, Any]:
        """:meth:`settings` as recorded in a unit's DONE marker (JSON values), with
        ``layouts`` for a stage that reads activations and ``parameter_caches`` for one that
        perturbs the parameters."""
        settings = self.settings(config)
        if self.reads_layouts:
            settings = {**settings, "layouts": LAYOUTS}
        if self.perturbs_parameters:
            settings = {**settings, "parameter_caches": PARAMETER_CACHES}
        return results.jsonable(settings)

    def unit_settings(self, config: Any, unit: str) -> dict[str, Any]:
        """The settings recorded with the unit named ``unit`` and compared with its marker
        (default: :meth:`recorded_settings`). A stage whose units depend on different
        settings overrides it, e.g. a cheap unit of rows derived from the RF analysis that
        records the analysis's version, so that a change to the analysis recomputes that unit
        alone."""
        return self.recorded_settings(config)

    def legacy_settings(self, config: Any) -> dict[str, Any]:
        """The value of each setting for a marker written before it was recorded (default:
        the config class's defaults: a setting added since changes nothing while it keeps
        its default)."""
        return self.recorded_settings(type(config)()) if is_dataclass(config) else {}

    def stale_reason(self, config: Any, out_dir: Path, unit: str,
                     seeds: Optional[list[int]] = None) -> Optional[str]:
        """Why the unit's rows do not match ``config`` (:func:`results.stale_reason`), or None.
        A setting missing from the unit's marker counts as its :meth:`legacy_settings` value.
        For a stage that reads layouts, a unit of a built-in architecture read its layouts
        right however it recorded them (kept); any other model's unit written with an older
        reading (or none recorded) is recomputed. Likewise a stage that perturbs the
        parameters recomputes a unit that kept a parameter-derived cache's first value
        (recorded so, or written before it was recorded) of a model that has such a cache."""
        settings, ignore = self.unit_settings(config, unit), []
        legacy = self.legacy_settings(config)
        if self.reads_layouts:
            if _builtin_cell(out_dir):
                ignore.append("layouts")
            legacy = {**legacy, "layouts": _MODULES_ONLY}
        if self.perturbs_parameters and "parameter_caches" in settings:
            if not _caches_parameters(out_dir):
                ignore.append("parameter_caches")
            legacy = {**legacy, "parameter_caches": _FIRST_FORWARD}
        legacy = {k: v for k, v in legacy.items() if k in settings}  # of this unit's settings
        return results.stale_reason(out_dir, unit, settings, seeds, defaults=legacy,
                                    ignore=ignore)

    def run(self, ctx: Any, config: Any, unit: Unit) -> Result:
        raise NotImplementedError(f"stage {self.name!r} does not implement run()")


STAGES: Registry[Stage] = Registry("stage")


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: register a stage, after those registered before it."""
    if getattr(cls, "level", None) not in LEVELS:
        raise ValueError(f"stage {cls.__name__}: level must be one of {LEVELS}, got "
                         f"{getattr(cls, 'level', None)!r}")
    if not isinstance(getattr(cls, "name", None), str):
        raise ValueError(f"stage {cls.__name__} must set a class attribute `name`")
    STAGES.register(cls.name)(cls())
    return cls


def registered_stages(level: Optional[str] = None) -> list[Stage]:
    """The registered stages in pipeline order (optionally of one level)."""
    return [s for s in STAGES.values() if level is None or s.level == level]


def stage_names() -> list[str]:
    return [s.name for s in registered_stages()]
