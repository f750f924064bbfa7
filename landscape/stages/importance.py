"""Importance-map stage: projected-gradient maps and ERF size of a run's model (at init by
default), as rows ``importance_max`` / ``importance_max_std`` / ``importance_n`` /
``erf_size`` / ``erf_area`` plus the mean map saved as an array for plotting."""

from __future__ import annotations

from dataclasses import dataclass, field

from landscape.importance import MODES, erf_stats, projected_gradient_maps
from landscape.models import check_input_size
from landscape.seeds import IMPORTANCE, stream_seed
from landscape.stages.base import (
    Output, RunContext, Stage, Unit, check_checkpoints, register_stage,
)


@dataclass
class ImportanceConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["init"])  # "init" and/or "final"
    mode: str = "paper"  # "paper" (random inputs, eval mode) | "linearised" (paper's code)
    input_size: int = 64
    n_samples: int = 50
    mass_fraction: float = 0.95  # ERF size: smallest centred square holding this mass
    rel_threshold: float = 0.1  # ERF area: pixels >= this fraction of the map's maximum


@register_stage
class ImportanceStage(Stage):
    name = "importance"
    config_field = "importance"

    def validate(self, config: ImportanceConfig) -> None:
        check_checkpoints("importance", config.checkpoints)
        if config.mode not in MODES:
            raise ValueError(f"importance.mode must be one of {MODES}, got {config.mode!r}")

    def units(self, config: ImportanceConfig) -> list[Unit]:
        return [Unit(f"importance_{c}", {"checkpoint": c}) for c in config.checkpoints]

    def run(self, ctx: RunContext, config: ImportanceConfig, unit: Unit) -> Output:
        c, checkpoint = config, unit.params["checkpoint"]
        model = ctx.load_model(checkpoint)
        check_input_size(model, c.input_size)  # names importance.input_size's smallest value
        maps = projected_gradient_maps(
            model, input_size=c.input_size, n_samples=c.n_samples, mode=c.mode,
            seed=stream_seed(ctx.identity.seed, IMPORTANCE), device=ctx.settings.device,
        )
        erf = erf_stats(maps.mean_map, mass_fraction=c.mass_fraction,
                        rel_threshold=c.rel_threshold)
        note = (f"checkpoint={checkpoint}; mode={c.mode}; layer={maps.layer}; "
                f"input_size={c.input_size}; bn={maps.bn_mode}; mass_fraction={c.mass_fraction}; "
                f"rel_threshold={c.rel_threshold}")
        values = {"importance_max": maps.max_mean, "importance_max_std": maps.max_std,
                  "importance_n": maps.n, "erf_size": erf.size, "erf_area": erf.area}
        rows = [{"stage": unit.name, "metric": k, "value": v, "layer": maps.layer, "note": note}
                for k, v in values.items()]
        return Output(rows, {"mean_map": maps.mean_map, "maxima": maps.maxima})
