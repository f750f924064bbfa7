"""Receptive-field analysis: analytic r_min / r_max per layer (fx-traced, residual-aware),
unproductive and border layers, pool-level sweeps, and the gradient-measured RF."""

from landscape.receptive_field.analytic import (
    SWEEP_COLUMNS, TABLE_COLUMNS, format_sweep_table, max_receptive_field,
    receptive_field_table, rf_sweep_table,
)
from landscape.receptive_field.geometry import UnsupportedModelError
from landscape.receptive_field.graph import trace_model
from landscape.receptive_field.measured import (
    MODES, MeasuredReceptiveField, measure_receptive_field,
)

__all__ = [
    "MODES", "MeasuredReceptiveField", "SWEEP_COLUMNS", "TABLE_COLUMNS",
    "UnsupportedModelError", "format_sweep_table", "max_receptive_field",
    "measure_receptive_field", "receptive_field_table", "rf_sweep_table", "trace_model",
]
