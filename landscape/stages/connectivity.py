"""Cell-level mode-connectivity stage: the linear path between every pair of seeds of a cell
and its loss barrier (Frankle et al. 2020); :func:`landscape.geometry.linear_path`.

Unit ``connectivity_<checkpoint>``, over the seeds whose training finished (redone when more
finish). The loss is the mean cross-entropy on the first ``n_samples`` training images without
augmentation; BatchNorm statistics are recomputed at every point on the same images
(``bn=recalibrated``) or interpolated like the weights (``bn=interpolated``, the artefact).
Rows: ``path_loss`` / ``path_acc`` at ``coord_x`` = alpha, and ``loss_barrier``, each with
``seed`` (alpha = 0) and ``seed_b`` (alpha = 1). A unit stopped on the way goes on at the
first point it had not evaluated (``<cell>/cell/checkpoints/connectivity/<unit>/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from landscape.geometry import PATH_BN, linear_path
from landscape.stages.base import (
    CellContext, Stage, Unit, check_checkpoints, check_counts, register_stage,
)
from landscape.stages.batches import bn_recalibration_marker, evaluation_batches
from landscape.stages.cka import PAIRS, seed_pairs
from landscape.stages.scratch import unit_progress


@dataclass
class ConnectivityConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["final"])  # init, final, best
    points: int = 11  # alphas evenly spaced in [0, 1], both ends included
    pairs: str = "all"  # all pairs of seeds | consecutive (s0-s1, s1-s2, ...)
    n_samples: int = 1000  # the first n training images (no augmentation)
    batch_size: int = 500
    bn: str = "recalibrated"  # recalibrated (at every point) | interpolated (the artefact)


@register_stage
class ConnectivityStage(Stage):
    name = "connectivity"
    perturbs_parameters = True
    level = "cell"
    config_field = "connectivity"

    def validate(self, config: ConnectivityConfig) -> None:
        check_checkpoints("connectivity", config.checkpoints)
        check_counts("connectivity", config, ["points"], minimum=2)  # both ends
        check_counts("connectivity", config, ["n_samples", "batch_size"])
        if config.pairs not in PAIRS:
            raise ValueError(f"connectivity.pairs must be one of {PAIRS}, got {config.pairs!r}")
        if config.bn not in PATH_BN:
            raise ValueError(f"connectivity.bn must be one of {PATH_BN}, got {config.bn!r}")

    def units(self, config: ConnectivityConfig) -> list[Unit]:
        return [Unit(f"connectivity_{c}", {"checkpoint": c}) for c in config.checkpoints]

    def settings(self, config: ConnectivityConfig) -> dict:
        return {**super().settings(config), **bn_recalibration_marker(config)}

    def run(self, ctx: CellContext, config: ConnectivityConfig, unit: Unit) -> list[dict]:
        c = config
        models = ctx.load_models(unit.params["checkpoint"])
        batches = evaluation_batches(ctx, c.n_samples, c.batch_size)
        alphas = np.linspace(0.0, 1.0, c.points)
        note = (f"checkpoint={unit.params['checkpoint']}; bn={c.bn}; "
                f"n_samples={sum(len(y) for _, y in batches)}; training images, no augmentation")
        rows: list[dict] = []
        with unit_progress(ctx, self, unit.name, c, models) as journal:
            for a, b in [(a, b) for a, b in seed_pairs(list(models), c.pairs) if a != b]:
                path = linear_path(models[a], models[b], batches, alphas, bn=c.bn,
                                   bn_batches=batches if c.bn == "recalibrated" else None,
                                   journal=journal, key=f"path:{a}-{b}")
                pair = {"seed": a, "seed_b": b}
                rows += [{"metric": m, "value": float(v), "coord_x": float(x), **pair}
                         for m, values in (("path_loss", path.loss),
                                           ("path_acc", path.accuracy))
                         for x, v in zip(alphas, values)]
                rows.append({"metric": "loss_barrier", "value": path.barrier, **pair})
        return [{"stage": unit.name, "note": note, **r} for r in rows]
