"""Importance-map stage: projected-gradient maps and ERF size of a run's model (at init by
default), as rows ``importance_max`` / ``importance_max_std`` / ``importance_n`` /
``erf_size`` / ``erf_area`` plus the mean map saved as an array for plotting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from landscape import results
from landscape.importance import MODES, erf_stats, projected_gradient_maps
from landscape.stages import check_checkpoints
from landscape.train import derive_seed

if TYPE_CHECKING:
    from landscape.pipeline import RunContext



@dataclass
class ImportanceConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["init"])  # "init" and/or "final"
    mode: str = "paper"  # "paper" (random inputs, eval mode) | "linearised" (paper's code)
    input_size: int = 64
    n_samples: int = 50
    mass_fraction: float = 0.95  # ERF size: smallest centred square holding this mass
    rel_threshold: float = 0.1  # ERF area: pixels >= this fraction of the map's maximum


def validate(cfg: ImportanceConfig) -> None:
    check_checkpoints("importance", cfg.checkpoints)
    if cfg.mode not in MODES:
        raise ValueError(f"importance.mode must be one of {MODES}, got {cfg.mode!r}")


def variants(cfg) -> list[tuple[str, dict]]:
    validate(cfg.importance)
    return [(c, {"checkpoint": c}) for c in cfg.importance.checkpoints]


results.register_metric("importance_max", "mean over samples of the per-sample maximum of the "
                        "projected-gradient map (|d out / d pixel|); note holds the settings")
results.register_metric("importance_max_std", "population std over samples of the per-sample "
                        "maximum of the projected-gradient map")
results.register_metric("importance_n", "number of input samples behind importance_max")
results.register_metric("erf_size", "side (pixels) of the smallest centred square holding "
                        "mass_fraction of the mean importance map (Luo et al. 2016)")
results.register_metric("erf_area", "pixels of the mean importance map >= rel_threshold x max")


def importance_stage(ctx: "RunContext", checkpoint: str) -> list[dict]:
    c = ctx.cfg.importance
    model = ctx.load_model(checkpoint)
    maps = projected_gradient_maps(
        model, input_size=c.input_size, n_samples=c.n_samples, mode=c.mode,
        seed=derive_seed(ctx.cfg.seed, 7919), device=ctx.settings.device,
    )
    erf = erf_stats(maps.mean_map, mass_fraction=c.mass_fraction, rel_threshold=c.rel_threshold)
    ctx.save_array("mean_map", maps.mean_map)
    ctx.save_array("maxima", maps.maxima)
    note = (f"checkpoint={checkpoint}; mode={c.mode}; layer={maps.layer}; "
            f"input_size={c.input_size}; bn={maps.bn_mode}; mass_fraction={c.mass_fraction}; "
            f"rel_threshold={c.rel_threshold}")
    stage = f"importance_{checkpoint}"
    values = {"importance_max": maps.max_mean, "importance_max_std": maps.max_std,
              "importance_n": maps.n, "erf_size": erf.size, "erf_area": erf.area}
    return [{"stage": stage, "metric": k, "value": v, "layer": maps.layer, "note": note}
            for k, v in values.items()]
