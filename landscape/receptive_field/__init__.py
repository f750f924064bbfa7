"""Receptive-field analysis of any traceable CNN: analytic r_min / r_max per layer and axis
(fx-traced, residual-aware, with a recorded meta-device forward where fx fails), unproductive,
border and underutilised layers, the minimal feasible input resolution r̃, pool-level sweeps,
and the gradient-measured RF."""

from landscape.receptive_field.analytic import (
    CONVENTIONS, TABLE_COLUMNS, TRACERS, FeasibleInput, feature_field, max_receptive_field,
    min_feasible_input, mixes_globally, receptive_field_table,
)
from landscape.receptive_field.geometry import UnsupportedModelError
from landscape.receptive_field.graph import SE_GATES, trace_model
from landscape.receptive_field.cost import ModelCost, model_cost
from landscape.receptive_field.drawing import draw_receptive_field, save_drawing
from landscape.receptive_field.refine import (
    Proposal, apply_edits, proposals_table, refinement_proposals,
)
from landscape.receptive_field.measured import (
    MODES, MeasuredReceptiveField, measure_receptive_field,
)
from landscape.receptive_field.sweep import SWEEP_COLUMNS, format_sweep_table, rf_sweep_table
from landscape.models.sources import (
    external_model, timm_model, torchvision_classifiers, torchvision_model,
)

__all__ = [
    "CONVENTIONS", "FeasibleInput", "MODES", "MeasuredReceptiveField", "ModelCost", "Proposal",
    "SE_GATES", "apply_edits", "draw_receptive_field", "external_model", "model_cost",
    "proposals_table", "refinement_proposals", "save_drawing", "timm_model",
    "SWEEP_COLUMNS", "TABLE_COLUMNS", "UnsupportedModelError", "format_sweep_table",
    "feature_field", "max_receptive_field", "measure_receptive_field", "min_feasible_input",
    "mixes_globally",
    "receptive_field_table", "rf_sweep_table", "torchvision_classifiers", "torchvision_model",
    "TRACERS", "trace_model",
]
