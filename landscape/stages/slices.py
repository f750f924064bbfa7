"""Loss-slice stage: 1D and 2D slices of the training loss around a run's checkpoint along
filter-normalised random directions (Li et al. 2018) or the top Hessian eigenvectors;
:mod:`landscape.geometry`.

``slice.directions`` lists the kinds of directions:

* ``random``: units ``slice_1d_<checkpoint>`` and ``slice_2d_<checkpoint>``; directions drawn
  from the run's seed (``SLICE`` stream: draw 0, and draw 1 for a plane's second), normalised
  by ``slice.normalisation`` (coordinate 1 = the norm of each filter of the weights, for
  ``filter``);
* ``hessian``: units ``slice_hessian_1d_<checkpoint>`` / ``slice_hessian_2d_<checkpoint>``
  along the top one / two eigenvectors saved by the Hessian unit of the same checkpoint
  (``hessian.save_eigenvectors >= 1`` or ``2``), each scaled as a whole to the norm of the
  weights (``model`` normalisation: coordinate 1 = a step of length ``||w||``; it stays an
  eigenvector, so ``slice.normalisation`` and ``include_bn_bias`` do not apply), over
  ``[-hessian_span, hessian_span]``: the sharpest direction needs a far shorter range than a
  filter-normalised one (measured on two demo nets: the training loss rose from 0.07 to 6.4
  (VGG19, pool 0) and from 0.12 to 3.3 (ResNet18, pool 2) at 0.01 ||w||, and to ~1e16 at
  1 ||w||).

The evaluation set is the first ``n_samples`` training images without augmentation, on the
device, in batches. Rows: ``slice_loss`` and ``slice_acc`` with ``coord_x`` (and
``coord_y``) in units of the direction. A unit stopped on the way (a preemption, a time limit)
goes on at the points it had not evaluated (``checkpoints/slice/<unit>/``,
:func:`landscape.stages.scratch.unit_progress`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from landscape.geometry import (
    BN_MODES, NORMALISATIONS, direction_from_vector, loss_slice, normalise, random_direction,
)
from landscape.seeds import SLICE, stream_seed
from landscape.stages.base import (
    RunContext, Stage, Unit, check_checkpoints, check_counts, check_number, register_stage,
)
from landscape.stages.batches import bn_recalibration_marker, evaluation_batches
from landscape.stages.scratch import unit_progress


@dataclass
class SliceConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["final"])  # init, final and/or best
    dims: list[int] = field(default_factory=lambda: [1, 2])  # 1D curves and/or 2D planes
    span: float = 1.0  # coordinates in [-span, span] (random directions)
    points_1d: int = 41
    points_2d: int = 21  # per axis: 21 x 21 = 441 evaluations of the loss
    n_samples: int = 1000  # the first n training images (no augmentation)
    batch_size: int = 500
    normalisation: str = "filter"  # filter | layer | none
    include_bn_bias: bool = False  # move biases and BN parameters too (NaN-prone)
    bn: str = "eval"  # eval (running statistics) | recalibrated (at every point)
    max_points: int = 2601  # refuse slices with more loss evaluations (51 x 51)
    directions: list[str] = field(default_factory=lambda: ["random"])  # random and/or hessian
    hessian_span: float = 0.01  # coordinates of the Hessian slices, in units of ||w||


DIRECTIONS = ("random", "hessian")


def validate(cfg: SliceConfig) -> None:
    check_checkpoints("slice", cfg.checkpoints)
    if not cfg.dims or any(d not in (1, 2) for d in cfg.dims):
        raise ValueError(f"slice.dims must be a non-empty subset of [1, 2], got {cfg.dims}")
    check_number("slice.span", cfg.span, above=0)
    check_number("slice.hessian_span", cfg.hessian_span, above=0)
    check_counts("slice", cfg, ["points_1d", "points_2d"], minimum=2)
    check_counts("slice", cfg, ["n_samples", "batch_size", "max_points"])
    if cfg.normalisation not in NORMALISATIONS:
        raise ValueError(f"slice.normalisation must be one of {NORMALISATIONS}, got "
                         f"{cfg.normalisation!r}")
    if not cfg.directions or any(d not in DIRECTIONS for d in cfg.directions):
        raise ValueError(f"slice.directions must be a non-empty subset of {list(DIRECTIONS)}, "
                         f"got {cfg.directions}")
    if cfg.bn not in BN_MODES:
        raise ValueError(f"slice.bn must be one of {BN_MODES}, got {cfg.bn!r}")
    for d, n in ((1, cfg.points_1d), (2, cfg.points_2d ** 2)):
        if d in cfg.dims and n > cfg.max_points:
            raise ValueError(f"a {d}D slice of slice.points_{d}d={n if d == 1 else cfg.points_2d}"
                             f" needs {n} loss evaluations, over slice.max_points="
                             f"{cfg.max_points}; lower the points or raise the budget")


@register_stage
class SliceStage(Stage):
    name = "slice"
    perturbs_parameters = True
    config_field = "slice"
    selects = ("enabled", "checkpoints", "directions")

    def validate(self, config: SliceConfig) -> None:
        validate(config)

    def settings(self, config: SliceConfig) -> dict:
        return {**super().settings(config), **bn_recalibration_marker(config)}

    def validate_across(self, config: SliceConfig, enabled: Mapping[str, Any]) -> None:
        """Hessian directions are the eigenvectors the hessian stage saves for the same
        checkpoint (unit ``hessian_<checkpoint>``): that stage must be on and save enough."""
        if "hessian" not in config.directions:
            return
        need, h = max(config.dims), enabled.get("hessian")
        missing = [c for c in config.checkpoints if h is None or c not in h.checkpoints]
        if h is None or h.protocol != "default" or h.save_eigenvectors < need or missing:
            got = ("the hessian stage is off" if h is None else
                   f"got hessian.protocol={h.protocol}, hessian.save_eigenvectors="
                   f"{h.save_eigenvectors}, hessian.checkpoints={list(h.checkpoints)}")
            raise ValueError(
                "slice.directions=[hessian] slices along the top Hessian eigenvectors that the "
                f"hessian stage saves: it needs hessian.enabled=true, hessian.protocol=default, "
                f"hessian.save_eigenvectors>={need} (slice.dims={list(config.dims)}) and "
                f"slice.checkpoints={list(config.checkpoints)} among hessian.checkpoints; {got}")

    def units(self, config: SliceConfig) -> list[Unit]:
        return [Unit(f"slice_{'hessian_' if k == 'hessian' else ''}{d}d_{c}",
                     {"checkpoint": c, "dims": d, "directions": k})
                for k in DIRECTIONS if k in config.directions
                for c in config.checkpoints for d in sorted(set(config.dims))]

    def run(self, ctx: RunContext, config: SliceConfig, unit: Unit) -> list[dict]:
        c, dims, checkpoint = config, unit.params["dims"], unit.params["checkpoint"]
        model = ctx.load_model(checkpoint)
        batches = evaluation_batches(ctx, c.n_samples, c.batch_size)
        if unit.params["directions"] == "hessian":
            directions = hessian_directions(ctx, model, checkpoint, dims)
            how = "directions=hessian eigenvectors 1..%d, scaled to ||w||" % dims
        else:
            directions = [random_direction(model, seed=stream_seed(ctx.identity.seed, SLICE, i),
                                           normalisation=c.normalisation,
                                           include_bn_bias=c.include_bn_bias)
                          for i in range(dims)]
            how = f"normalisation={c.normalisation}; include_bn_bias={c.include_bn_bias}"
        n = c.points_1d if dims == 1 else c.points_2d
        span = c.hessian_span if unit.params["directions"] == "hessian" else c.span
        axis = np.linspace(-span, span, n)
        with unit_progress(ctx, self, unit.name, c, model) as journal:  # point by point
            s = loss_slice(model, batches, directions, [axis] * dims, bn=c.bn,
                           bn_batches=batches if c.bn == "recalibrated" else None,
                           progress=ctx.progress, journal=journal)
        note = (f"checkpoint={checkpoint}; {how}; span={span}; bn={c.bn}; "
                f"n_samples={sum(len(y) for _, y in batches)}; training images, no augmentation")
        rows = []
        for idx in np.ndindex(s.loss.shape):
            coords = {"coord_x": float(axis[idx[0]])}
            if dims == 2:
                coords["coord_y"] = float(axis[idx[1]])
            rows += [{"metric": "slice_loss", "value": float(s.loss[idx]), **coords},
                     {"metric": "slice_acc", "value": float(s.accuracy[idx]), **coords}]
        return [{"stage": unit.name, "note": note, **r} for r in rows]


def hessian_directions(ctx: RunContext, model, checkpoint: str, dims: int) -> list[dict]:
    """The top ``dims`` eigenvectors saved by the unit ``hessian_<checkpoint>``, as directions
    scaled to the norm of the weights they cover."""
    unit = f"hessian_{checkpoint}"
    try:
        saved = ctx.read_arrays(unit)
    except FileNotFoundError:
        saved = {}
    vectors = saved.get("eigenvectors")
    if vectors is None or len(vectors) < dims:
        have = 0 if vectors is None else len(vectors)
        raise ValueError(
            f"slice.directions=hessian needs the top {dims} Hessian eigenvector(s) of the "
            f"{checkpoint} checkpoint, but the unit {unit} saved {have}: enable the Hessian "
            f"stage with hessian.checkpoints including {checkpoint!r}, hessian.protocol=default "
            f"and hessian.save_eigenvectors >= {dims}")
    names = [str(n) for n in saved["names"]]
    return [normalise(direction_from_vector(model, names, torch.from_numpy(vectors[i])),
                      model, "model") for i in range(dims)]
