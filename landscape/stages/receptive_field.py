"""Cell-level receptive-field stage: the analytic RF table of the cell's model at its input
size (r_max, r_min, jump, unproductive, underutilised and border flags per layer, r̃, the
FLOPs of one forward pass and the weights that only ever multiply zero padding there:
:mod:`landscape.receptive_field.padding`),
written once per cell by the first run of the cell that gets there; it needs no training. A
model the analysis cannot follow gets one ``rf_unsupported`` row naming the op (and its
FLOPs): the run goes on. Each unit records the digest of the analysis's source
(:func:`~landscape.receptive_field.version.analysis_version`): a cell whose table another
version of the analysis computed is recomputed (in well under a second), so a store never
keeps a table an older analysis got wrong."""

from __future__ import annotations

from typing import Any

import pandas as pd

from landscape.receptive_field import UnsupportedModelError, receptive_field_table, version
from landscape.receptive_field.analytic import feasible_input_of
from landscape.receptive_field.cost import FLOPS_CONVENTION, model_cost
from landscape.receptive_field.padding import conv_linear_weights, padding_only_weights
from landscape.stages.base import CellContext, Stage, register_stage


@register_stage
class ReceptiveFieldStage(Stage):
    name = "receptive_field"
    level = "cell"
    needs_trained = False

    def recorded_settings(self, config: None) -> dict[str, Any]:
        return {"analysis": version.analysis_version()}

    def legacy_settings(self, config: None) -> dict[str, Any]:
        return {"analysis": None}  # a unit written before the version was recorded

    def run(self, ctx: CellContext, config: None, unit: object) -> list[dict]:
        size = ctx.identity.image_size
        model = ctx.build_model()
        note = f"input_size={size}"
        try:
            table = receptive_field_table(model, size)
        except UnsupportedModelError as exc:  # the model still trains: say why, once
            return [{"metric": "rf_unsupported", "value": 1.0, "note": f"{note}; {exc}"},
                    *self._cost(model, ctx, note)]
        rows = []
        for r in table.itertuples():
            values = {"rf_r_max": r.r_max, "rf_r_min": r.r_min, "rf_jump": r.jump,
                      "rf_unproductive": r.unproductive, "rf_underutilised": r.underutilised,
                      "rf_border": r.border}
            rows += [{"metric": k, "value": float(v), "layer": r.layer, "note": note}
                     for k, v in values.items() if not pd.isna(v)]  # global layers: no RF
        r_tilde = feasible_input_of(table)
        axes = "" if r_tilde.h == r_tilde.w else f"; H {r_tilde.h} at {r_tilde.layer_h}, W {r_tilde.w}"
        rows.append({"metric": "rf_min_feasible_input", "value": float(max(r_tilde.h, r_tilde.w)),
                     "layer": r_tilde.layer_h if r_tilde.h >= r_tilde.w else r_tilde.layer_w,
                     "note": note + axes})
        return rows + self._cost(model, ctx, note)

    @staticmethod
    def _cost(model, ctx: CellContext, note: str) -> list[dict]:
        """FLOPs and the weights that only multiply padding (neither needs the RF analysis)."""
        size, channels = ctx.identity.image_size, ctx.identity.in_channels
        cost = model_cost(model, size, channels)
        dead, weights = padding_only_weights(model, size, channels), conv_linear_weights(model)
        return [{"metric": "flops_per_image", "value": float(cost.flops),
                 "note": f"{note}; {FLOPS_CONVENTION}"},
                *[{"metric": "padding_only_weights", "value": float(r.dead), "layer": r.layer,
                   "note": f"{note}; of {r.weights}"} for r in dead if r.dead],
                {"metric": "padding_only_share",
                 "value": sum(r.dead for r in dead) / weights if weights else 0.0,
                 "note": f"{note}; of {weights} conv and linear weights"}]
