"""The stages of a run and of a cell, in pipeline order (the registry is the only list).

Importing this package registers the built-in stages; a user stage is one more module with a
``@register_stage`` class (see ``landscape.stages.base`` and README)."""

from landscape.stages import train  # noqa: F401  (registration order = pipeline order)
from landscape.stages import prune  # noqa: F401
from landscape.stages import finetune  # noqa: F401
from landscape.stages import imp  # noqa: F401
from landscape.stages import hessian  # noqa: F401
from landscape.stages import importance  # noqa: F401
from landscape.stages import slices  # noqa: F401
from landscape.stages import sharpness  # noqa: F401
from landscape.stages import probes  # noqa: F401
from landscape.stages import resolution  # noqa: F401
from landscape.stages import receptive_field  # noqa: F401
from landscape.stages import cka  # noqa: F401
from landscape.stages import connectivity  # noqa: F401
from landscape.stages.base import (
    CHECKPOINTS, CellContext, Output, RunContext, Stage, Unit, register_stage,
    registered_stages, stage_names,
)
from landscape.stages.checkpoints import check_saved_checkpoints

__all__ = [
    "CHECKPOINTS", "CellContext", "Output", "RunContext", "Stage", "Unit",
    "check_saved_checkpoints", "register_stage", "registered_stages", "stage_names",
]
