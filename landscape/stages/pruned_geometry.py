"""Geometry of the pruned networks, measured inside the prune and fine-tune units.

The pruned and fine-tuned weights exist only inside those units (a fine-tuned network is not
saved: 80 runs x 5 rates of a 20M-weight model would be 32 GB), so the measurements that need
them run there, on the network in memory, after its test accuracy was measured:

* ``prune.hessian_k > 0``: the top-k eigenvalues of the Hessian of the training loss restricted
  to the unpruned weights (:class:`~landscape.hessian.MaskedOperator`: ``H[S, S]``, pruned
  weights held at zero; biases and BatchNorm parameters are never pruned and are kept), rows
  ``pruned_hessian_eigenvalue`` / ``pruned_hessian_residual`` (``index`` = rank) and
  ``pruned_hessian_dim`` (``|S|``). A rate of 0 in ``prune.rates`` gives the dense network's
  values by the same procedure.
* ``prune.hessian_blocks``: per module, the top eigenvalue and the Hutchinson trace of its
  diagonal block restricted to the kept weights (:func:`~landscape.hessian.block_curvature`),
  rows ``block_hessian_eigenvalue`` / ``block_hessian_trace`` (``layer`` = module).
* ``prune.path_points >= 2``: the linear path from the dense checkpoint (alpha = 0) to the
  pruned, or fine-tuned, network (alpha = 1) with BatchNorm statistics recomputed at every
  point, rows ``dense_path_loss`` / ``dense_path_acc`` (``coord_x`` = alpha) and
  ``dense_path_barrier``.

All three use the first ``prune.geometry_samples`` training images without augmentation and
BatchNorm in eval mode (the Hessians). The settings are not part of the unit names: changing
them recomputes the units (a fine-tune unit fine-tunes again, as its weights are not kept).
What a unit measured is kept as it goes (``checkpoints/prune/<unit>/``; a fine-tune unit's
beside its fine-tuned weights, ``checkpoints/{finetune,retrain}/<unit>/measured/``): the top-k
solve's restarts, the blocks, the path's points; a unit stopped on the way goes on from there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
from torch import Tensor, nn
from torch.nn import functional as F

from landscape.geometry import linear_path
from landscape.hessian import (
    HessianOperator, MaskedOperator, SolverOptions, block_curvature, top_eigenvalues,
)
from landscape.journal import Journal, kept
from landscape.seeds import PRUNED_HESSIAN, stream_seed
from landscape.stages.base import RunContext, check_counts
from landscape.stages.batches import evaluation_batches, recalibration_marker
from landscape.stages.scratch import unit_progress

log = logging.getLogger("landscape")

GEOMETRY_FIELDS = ("hessian_k", "hessian_blocks", "hessian_trace_samples", "hessian_tol",
                   "path_points", "geometry_samples", "geometry_batch_size")


def validate_geometry(cfg: Any) -> None:
    check_counts("prune", cfg, ["hessian_k", "path_points"], minimum=0)
    check_counts("prune", cfg, ["geometry_samples", "geometry_batch_size"])
    check_counts("prune", cfg, ["hessian_trace_samples"], minimum=2)  # a standard error
    if not 0 < cfg.hessian_tol < 1:
        raise ValueError(f"prune.hessian_tol must be in (0, 1), got {cfg.hessian_tol}")
    if cfg.path_points == 1:
        raise ValueError("prune.path_points must be 0 (no path) or >= 2 (both ends), got 1")
    if cfg.path_points and cfg.structured:
        raise ValueError("prune.path_points needs unstructured pruning: structured pruning "
                         "removes channels, so the dense and the pruned network have different "
                         "shapes and no linear path joins them; set prune.path_points=0")


def geometry_enabled(cfg: Any) -> bool:
    return bool(cfg.hessian_k or cfg.hessian_blocks or cfg.path_points)


def geometry_settings(cfg: Any) -> dict[str, Any]:
    """The settings recorded with a prune / fine-tune unit (a change recomputes it), with the
    BN recalibration's marker (its linear path; ``recalibrate_bn``: on the training split)
    and, for ``magnitude_gradient`` over several ``data_batches`` without ``options.batches``,
    their number (it read the first batch alone before: such a unit is recomputed)."""
    marker = {**(recalibration_marker(cfg.geometry_samples, cfg.geometry_batch_size)
                 if cfg.path_points else {}),
              **(recalibration_marker(None, 1) if cfg.recalibrate_bn else {})}
    if (not cfg.structured and cfg.criterion == "magnitude_gradient" and cfg.data_batches > 1
            and "batches" not in cfg.options):
        marker["magnitude_gradient_batches"] = cfg.data_batches
    return {**{k: getattr(cfg, k) for k in GEOMETRY_FIELDS}, **marker}


def pruned_geometry_rows(ctx: RunContext, cfg: Any, model: nn.Module,
                         masks: Optional[Mapping[str, Tensor]],
                         dense: Optional[nn.Module], note: str, *, stage: Any, unit: str,
                         folder: Optional[Path] = None) -> list[dict]:
    """The rows described in the module docstring for ``model`` (pruned by ``masks``; None
    for a structurally pruned network, whose every weight is kept); ``dense`` is the pruned
    checkpoint (needed when ``path_points``); ``note`` starts each row's note. ``model`` is
    not changed. What is measured is kept in the unit's scratch folder as it goes (the top-k
    solve's restarts, the blocks, the path's points; :func:`unit_progress` of ``stage`` and
    ``unit``, in ``folder`` when given): a unit stopped on the way goes on from there."""
    if not geometry_enabled(cfg):
        return []
    batches = evaluation_batches(ctx, cfg.geometry_samples, cfg.geometry_batch_size)
    nets = {"pruned": model, **({"dense": dense} if dense is not None else {})}
    with unit_progress(ctx, stage, unit, cfg, nets, folder=folder) as journal:
        rows = _measured(ctx, cfg, model, masks, dense, batches, journal)
    note += (f"; {sum(len(y) for _, y in batches)} training images (no augmentation); "
             f"Hessians: BN in eval mode, tol={cfg.hessian_tol}; path: BN recalibrated per point")
    return [{**r, "note": note} for r in rows]


def _measured(ctx: RunContext, cfg: Any, model: nn.Module,
              masks: Optional[Mapping[str, Tensor]], dense: Optional[nn.Module],
              batches: list, journal: Journal) -> list[dict]:
    seed = stream_seed(ctx.identity.seed, PRUNED_HESSIAN)
    masks = dict(masks or {})
    rows: list[dict] = []
    if cfg.hessian_k:
        op = HessianOperator(model, F.cross_entropy, batches, device=ctx.settings.device)
        masked = MaskedOperator(op, {n: m for n, m in masks.items() if n in op.names})
        k = min(cfg.hessian_k, masked.dim)
        if k < cfg.hessian_k:
            log.warning("%s: prune.hessian_k=%d exceeds the %d unpruned weights; computing %d",
                        ctx.identity.run_id, cfg.hessian_k, masked.dim, k)
        top = top_eigenvalues(masked, k, SolverOptions(which="LA", tol=cfg.hessian_tol,
                                                       seed=seed, progress=ctx.progress),
                              journal=journal)
        rows += [{"metric": "pruned_hessian_eigenvalue", "value": float(v), "index": i + 1}
                 for i, v in enumerate(top.eigenvalues)]
        rows += [{"metric": "pruned_hessian_residual", "value": float(v), "index": i + 1}
                 for i, v in enumerate(top.residuals)]
        rows.append({"metric": "pruned_hessian_dim", "value": masked.dim})
    if cfg.hessian_blocks:
        def blocks() -> dict:
            found = block_curvature(model, F.cross_entropy, batches, k=1,
                                    trace_samples=cfg.hessian_trace_samples,
                                    device=ctx.settings.device, seed=seed,
                                    tol=cfg.hessian_tol, masks=masks)
            return {"blocks": [[b.name, b.top_eigenvalue, b.trace] for b in found]}

        params = {"trace_samples": cfg.hessian_trace_samples, "tol": cfg.hessian_tol,
                  "seed": seed}
        for name, top_eigenvalue, trace in kept(journal, "blocks", params, blocks)["blocks"]:
            rows += [{"metric": "block_hessian_eigenvalue", "value": top_eigenvalue,
                      "layer": name},
                     {"metric": "block_hessian_trace", "value": trace, "layer": name}]
    if cfg.path_points:
        if dense is None:
            raise ValueError("prune.path_points needs the dense checkpoint")
        alphas = np.linspace(0.0, 1.0, cfg.path_points)
        path = linear_path(dense, model, batches, alphas, bn="recalibrated",
                           bn_batches=batches, journal=journal, key="dense_path")
        rows += [{"metric": m, "value": float(v), "coord_x": float(a)}
                 for m, values in (("dense_path_loss", path.loss),
                                   ("dense_path_acc", path.accuracy))
                 for a, v in zip(alphas, values)]
        rows.append({"metric": "dense_path_barrier", "value": path.barrier})
    return rows
