"""Cell-level receptive-field stage: the analytic RF table of the cell's model at its input
size (r_max, r_min, jump, unproductive and border flags per layer), written once per cell by
the first run of the cell that gets there; it needs no training."""

from __future__ import annotations

import pandas as pd

from landscape.receptive_field import receptive_field_table
from landscape.stages.base import CellContext, Stage, register_stage


@register_stage
class ReceptiveFieldStage(Stage):
    name = "receptive_field"
    level = "cell"
    needs_trained = False

    def run(self, ctx: CellContext, config: None, unit: object) -> list[dict]:
        size = ctx.identity.image_size
        table = receptive_field_table(ctx.build_model(), size)
        rows = []
        for r in table.itertuples():
            values = {"rf_r_max": r.r_max, "rf_r_min": r.r_min, "rf_jump": r.jump,
                      "rf_unproductive": r.unproductive, "rf_border": r.border}
            rows += [{"metric": k, "value": float(v), "layer": r.layer,
                      "note": f"input_size={size}"}
                     for k, v in values.items() if not pd.isna(v)]  # global layers: no RF
        return rows
