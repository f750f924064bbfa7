"""Cell-level CKA stage: layerwise linear CKA between the seeds of a cell.

For every pair of seeds (all pairs, or consecutive ones) plus each seed against itself (a
sanity diagonal), the L x L matrix of linear CKA between every layer of seed a and every
layer of seed b, on the first ``n_inputs`` test images (no augmentation). Rows:
``metric=cka`` with ``layer``, ``layer_b``, ``seed``, ``seed_b``; ``note`` holds the estimator.

``protocol=default`` (unit ``cka_<checkpoint>``): the outputs of every Conv2d and Linear (or
``layers``), the full, non-symmetric matrix. ``protocol=paper`` (unit
``cka_paper_<checkpoint>``): the released procedure: every ReLU output (49 layers for ResNet50,
16 for VGG19), biased HSIC over the whole input set, and the upper triangle (``j >= i``)
mirrored into a symmetric matrix (:func:`~landscape.cka.symmetrised_upper`).

``to_final`` (units ``cka_to_final_<checkpoint>``, off by default): within each seed, the
linear CKA between every selected layer at that checkpoint (e.g. a saved epoch, ``epoch_<n>``;
``saved`` = every saved epoch) and the same layer of the same seed's final weights, the
diagonal of their layerwise matrix: how far each layer's representation still is from where
training ends. Rows ``metric=cka_to_final`` with ``layer``, ``seed`` and ``epoch``; the same
inputs, layers and estimator as the between-seed units.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from landscape.activations import DEFAULT_LAYER_TYPES, select_modules
from landscape.cka import layerwise_cka_pairs, symmetrised_upper
from landscape.identity import RunIdentity
from landscape.stages.base import (
    CellContext, Stage, Unit, check_checkpoints, check_protocol, register_stage,
)
from landscape.stages.batches import test_batches

PAIRS = ("all", "consecutive")


@dataclass
class CKAConfig:
    enabled: bool = False
    # init, final, best, epoch_<n>, saved; may be empty when to_final is set
    checkpoints: list[str] = field(default_factory=lambda: ["final"])
    protocol: str = "default"  # default (ours) | paper (the released procedure)
    n_inputs: int = 1000  # the first n test images
    pairs: str = "all"  # "all" pairs of seeds | "consecutive" (s0-s1, s1-s2, ...)
    debiased: bool = False
    batch_size: Optional[int] = None  # set to use the minibatch estimator (needs debiased)
    layers: Optional[list[str]] = None  # glob patterns; default every Conv2d and Linear
    # Checkpoints each compared with the final weights of the same seed (cka_to_final rows):
    # init, best, epoch_<n>, saved (every saved epoch). Empty: none.
    to_final: list[str] = field(default_factory=list)


def validate(cfg: CKAConfig) -> None:
    if cfg.checkpoints or not cfg.to_final:  # empty: only the cka_to_final units
        check_checkpoints("cka", cfg.checkpoints)
    if cfg.to_final:
        check_checkpoints("cka.to_final", cfg.to_final)
        if "final" in cfg.to_final:
            raise ValueError(f"cka.to_final lists checkpoints to compare with final (its CKA "
                             f"with itself is 1): leave final out, got {list(cfg.to_final)}")
    if cfg.pairs not in PAIRS:
        raise ValueError(f"cka.pairs must be one of {PAIRS}, got {cfg.pairs!r}")
    if cfg.n_inputs < 4:
        raise ValueError(f"cka.n_inputs must be >= 4, got {cfg.n_inputs}")
    check_protocol("cka", cfg, requires={"debiased": False, "batch_size": None, "layers": None})


def seed_pairs(seeds: list[int], how: str) -> list[tuple[int, int]]:
    """Self pairs (the sanity diagonal) then the cross-seed pairs, in seed order."""
    seeds = sorted(seeds)
    cross = (list(itertools.combinations(seeds, 2)) if how == "all"
             else list(zip(seeds, seeds[1:])))
    return [(s, s) for s in seeds] + cross


def cka_rows(models: dict[int, torch.nn.Module], inputs: torch.Tensor, cfg: CKAConfig,
             device: torch.device) -> list[dict]:
    """Rows for every seed pair of ``models`` (seed -> model, already on ``device``); each
    seed's forward passes and Grams are computed once for all its pairs."""
    estimator = "minibatch" if cfg.batch_size else ("debiased" if cfg.debiased else "biased")
    paper = cfg.protocol == "paper"
    rows = []
    matrices = layerwise_cka_pairs(models, inputs, seed_pairs(list(models), cfg.pairs),
                                   layers=cfg.layers, debiased=cfg.debiased,
                                   layer_types=(nn.ReLU,) if paper else DEFAULT_LAYER_TYPES,
                                   batch_size=cfg.batch_size, device=device)
    for (a, b), res in matrices.items():
        note = (f"estimator={estimator}; n_inputs={res.n}"
                + ("; ReLU outputs; upper triangle mirrored" if paper else ""))
        matrix = symmetrised_upper(res.matrix) if paper else res.matrix
        rows += [{"metric": "cka", "value": float(matrix[i, j]), "layer": la, "layer_b": lb,
                  "seed": a, "seed_b": b, "protocol": cfg.protocol, "note": note}
                 for i, la in enumerate(res.layers_a) for j, lb in enumerate(res.layers_b)]
    return rows


def cka_to_final_rows(models: dict[int, torch.nn.Module], finals: dict[int, torch.nn.Module],
                      inputs: torch.Tensor, cfg: CKAConfig, device: torch.device) -> list[dict]:
    """Per seed, the CKA between each selected layer of ``models[seed]`` and the same layer
    of ``finals[seed]`` (the diagonal of their layerwise matrix), one seed at a time."""
    estimator = "minibatch" if cfg.batch_size else ("debiased" if cfg.debiased else "biased")
    types = (nn.ReLU,) if cfg.protocol == "paper" else DEFAULT_LAYER_TYPES
    rows = []
    for seed in sorted(models):
        pair = (("at", seed), ("final", seed))
        res = layerwise_cka_pairs({pair[0]: models[seed], pair[1]: finals[seed]}, inputs,
                                  [pair], layers=cfg.layers, debiased=cfg.debiased,
                                  layer_types=types, batch_size=cfg.batch_size,
                                  device=device)[pair]
        if res.layers_a != res.layers_b:
            raise ValueError(f"seed {seed}: the layers ran in another order at the two "
                             f"checkpoints ({res.layers_a} vs {res.layers_b})")
        note = f"estimator={estimator}; n_inputs={res.n}; to final of the same seed"
        rows += [{"metric": "cka_to_final", "value": float(res.matrix[i, i]), "layer": layer,
                  "seed": seed, "protocol": cfg.protocol, "note": note}
                 for i, layer in enumerate(res.layers_a)]
    return rows


@register_stage
class CKAStage(Stage):
    """Cell-level: one unit per checkpoint over the seeds that finished training; redone when
    more seeds have finished since it was written."""

    name = "cka"
    reads_layouts = True
    level = "cell"
    config_field = "cka"
    selects = ("enabled", "checkpoints", "to_final")
    checkpoint_fields = ("checkpoints", "to_final")
    versus_final_fields = ("to_final",)

    def validate(self, config: CKAConfig) -> None:
        validate(config)

    def validate_for(self, config: CKAConfig, identity: RunIdentity) -> None:
        """cka.layers select at least one module of this architecture with one output per
        forward pass (on the meta device)."""
        with torch.device("meta"):
            model = identity.build_model()
        paper = config.protocol == "paper"
        x = identity.meta_batch(2)
        try:
            select_modules(model, config.layers, arg="cka.layers",
                           types=(nn.ReLU,) if paper else DEFAULT_LAYER_TYPES, example=x)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None

    def units(self, config: CKAConfig) -> list[Unit]:
        tag = "paper_" if config.protocol == "paper" else ""
        return ([Unit(f"cka_{tag}{c}", {"checkpoint": c}) for c in config.checkpoints]
                + [Unit(f"cka_{tag}to_final_{c}", {"checkpoint": c, "to_final": True})
                   for c in config.to_final])

    def run(self, ctx: CellContext, config: CKAConfig, unit: Unit) -> list[dict]:
        inputs = torch.cat([x for x, _ in test_batches(ctx, config.n_inputs, 500)])
        models = ctx.load_models(unit.params["checkpoint"])
        if unit.params.get("to_final"):
            rows = cka_to_final_rows(models, ctx.load_models("final"), inputs, config,
                                     ctx.settings.device)
        else:
            rows = cka_rows(models, inputs, config, ctx.settings.device)
        return [{"stage": unit.name, **r} for r in rows]
