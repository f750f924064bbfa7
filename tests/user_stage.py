"""A stage defined outside the library, exactly as README shows: importing this module
registers it (``imports=[tests.user_stage]``); nothing in ``landscape`` is edited."""

from dataclasses import dataclass

from landscape.results import register_metric
from landscape.stages import Stage, Unit, register_stage

register_metric("weight_norm", "L2 norm of all weights of a checkpoint")


@dataclass
class WeightNormConfig:
    enabled: bool = True
    checkpoints: tuple = ("init", "final")


@register_stage
class WeightNorm(Stage):
    name = "weight_norm"
    level = "run"                     # or "cell": once per cell, over its trained seeds
    config_class = WeightNormConfig   # settings from RunConfig.stages["weight_norm"]

    def units(self, config):
        return [Unit(f"weight_norm_{c}", {"checkpoint": c}) for c in config.checkpoints]

    def run(self, ctx, config, unit):
        model = ctx.load_model(unit.params["checkpoint"])
        norm = sum(float(p.detach().pow(2).sum()) for p in model.parameters()) ** 0.5
        return [{"metric": "weight_norm", "value": norm, "stage": unit.name}]
