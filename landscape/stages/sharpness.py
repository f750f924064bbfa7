"""Sharpness stage: worst-case sharpness of the training loss around a run's checkpoint, in an
L2 ball (standard) and in the weight-scaled ball (adaptive, ASAM), by projected gradient
ascent (:func:`landscape.geometry.worst_case_sharpness`).

Unit ``sharpness_<checkpoint>``, on the first ``n_samples`` training images without
augmentation, BN in eval mode. Rows ``adaptive_sharpness`` and ``standard_sharpness`` (loss
units: the largest rise of the loss found within the ball) with the settings (the radius) in
``note``, the loss they rise from, ``sharpness_loss``, and the loss found,
``adaptive_perturbed_loss`` / ``standard_perturbed_loss`` (measured values are rows, never
notes: the report lists notes as settings); ``lambda_max / trace`` is read from the Hessian
rows in the report. A unit stopped on the way keeps the kinds it had finished
(``checkpoints/sharpness/<unit>/``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial

from torch.nn import functional as F

from landscape.geometry import Sharpness, worst_case_sharpness
from landscape.journal import kept
from landscape.stages.base import (
    RunContext, Stage, Unit, check_checkpoints, check_counts, check_number, register_stage,
)
from landscape.stages.batches import evaluation_batches
from landscape.stages.scratch import unit_progress

KINDS = ("adaptive", "standard")


@dataclass
class SharpnessConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["final"])  # init, final and/or best
    kinds: list[str] = field(default_factory=lambda: ["adaptive", "standard"])
    rho_adaptive: float = 0.5  # radius in |w|-scaled units (relative weight change)
    rho_standard: float = 0.05  # radius in weight units
    eta: float = 0.0  # adaptive scale |w| + eta
    steps: int = 20  # projected gradient-ascent steps
    n_samples: int = 1000  # the first n training images (no augmentation)
    batch_size: int = 500


@register_stage
class SharpnessStage(Stage):
    name = "sharpness"
    perturbs_parameters = True
    config_field = "sharpness"

    def validate(self, config: SharpnessConfig) -> None:
        check_checkpoints("sharpness", config.checkpoints)
        if not config.kinds or any(k not in KINDS for k in config.kinds):
            raise ValueError(f"sharpness.kinds must be a non-empty subset of {list(KINDS)}, "
                             f"got {config.kinds}")
        check_number("sharpness.rho_adaptive", config.rho_adaptive, above=0)
        check_number("sharpness.rho_standard", config.rho_standard, above=0)
        check_number("sharpness.eta", config.eta, above=0, strict=False)
        check_counts("sharpness", config, ["steps", "n_samples", "batch_size"])

    def units(self, config: SharpnessConfig) -> list[Unit]:
        return [Unit(f"sharpness_{c}", {"checkpoint": c}) for c in config.checkpoints]

    def run(self, ctx: RunContext, config: SharpnessConfig, unit: Unit) -> list[dict]:
        c = config
        model = ctx.load_model(unit.params["checkpoint"])
        batches = evaluation_batches(ctx, c.n_samples, c.batch_size)
        rows = []
        with unit_progress(ctx, self, unit.name, c, model) as journal:  # kind by kind
            found = {kind: Sharpness(**kept(journal, kind, {}, partial(
                _measure, ctx, c, model, batches, kind))) for kind in c.kinds}
        for kind, s in found.items():
            adaptive, rho = kind == "adaptive", _rho(c, kind)
            n = sum(len(y) for _, y in batches)
            note = (f"checkpoint={unit.params['checkpoint']}; rho={rho}; steps={c.steps}; "
                    f"eta={c.eta if adaptive else 'n/a'}; n_samples={n}; training images, "
                    "BN eval")
            if not rows:
                rows.append({"metric": "sharpness_loss", "value": s.loss,
                             "note": f"n_samples={n}; training images, BN eval"})
            rows.append({"metric": f"{kind}_sharpness", "value": s.sharpness, "note": note})
            rows.append({"metric": f"{kind}_perturbed_loss", "value": s.perturbed_loss,
                         "note": note})
        return [{"stage": unit.name, **r} for r in rows]


def _rho(c: SharpnessConfig, kind: str) -> float:
    return c.rho_adaptive if kind == "adaptive" else c.rho_standard


def _measure(ctx: RunContext, c: SharpnessConfig, model, batches, kind: str) -> dict:
    return asdict(worst_case_sharpness(model, F.cross_entropy, batches, rho=_rho(c, kind),
                                       adaptive=kind == "adaptive", steps=c.steps, eta=c.eta,
                                       device=ctx.settings.device))
