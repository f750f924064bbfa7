"""Hessian stage: top-k eigenvalues, spectral density (SLQ) and trace of a run's training loss,
at init and after training (one unit per checkpoint).

The evaluation set is the first ``n_samples`` training images without augmentation, in a fixed
order; the loss is their mean cross-entropy (no weight decay). Rows: ``hessian_eigenvalue``
and ``hessian_residual`` (``index`` = rank, 1 = largest), ``hessian_trace`` and
``hessian_trace_stderr``, SLQ ``hessian_density_node`` / ``hessian_density_weight`` (``index``
= run * n_iter + step), ``hessian_num_hvp``, ``hessian_converged``, ``hessian_seconds``;
``note`` records the BatchNorm mode, backend and evaluation set.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

from torch.nn import functional as F
from torch.utils.data import Subset

from landscape.hessian import (
    BN_MODES, EIGEN_BACKENDS, HessianOperator, SolverOptions, hessian_trace, spectral_density,
    top_eigenvalues,
)
from landscape.seeds import HESSIAN, stream_seed
from landscape.stages.base import RunContext, Stage, Unit, check_checkpoints, register_stage
from landscape.train import make_loader

log = logging.getLogger("landscape")


@dataclass
class HessianConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["init", "final"])
    k: int = 90  # top eigenvalues (the paper: 90)
    which: str = "LA"  # LA: largest algebraic | LM: largest magnitude
    n_samples: int = 1000  # training images in the evaluation set
    batch_size: int = 250
    bn_mode: str = "eval"  # eval | recalibrated | train
    tol: float = 1e-4  # residual tolerance relative to |lambda_max|
    max_iter: Optional[int] = None  # cap on Hessian-vector products (None = backend default)
    backend: str = "lanczos"  # lanczos | scipy | pyhessian
    density_runs: int = 4  # SLQ runs (0 = no density); the top-k run is reused as one
    density_iter: int = 60
    trace_samples: int = 50  # Hutchinson samples (0 = no trace)


def validate(cfg: HessianConfig) -> None:
    check_checkpoints("hessian", cfg.checkpoints)
    for name, allowed in (("which", ("LA", "LM")), ("bn_mode", BN_MODES),
                          ("backend", EIGEN_BACKENDS.names())):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"hessian.{name} must be one of {tuple(allowed)}, "
                             f"got {getattr(cfg, name)!r}")
    for name in ("k", "n_samples", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"hessian.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.density_runs < 0 or cfg.trace_samples < 0 or cfg.density_iter < 2:
        raise ValueError("hessian.density_runs and hessian.trace_samples must be >= 0 and "
                         "hessian.density_iter >= 2")


def evaluation_batches(ctx: RunContext, n: int, batch_size: int) -> list:
    """The first ``n`` training images without augmentation, fixed order, on the device."""
    ds = ctx.data.train_eval
    ds = Subset(ds, range(min(n, len(ds))))
    loader = make_loader(ds, batch_size, ctx.settings, shuffle=False)
    return [(ctx.settings.to_device(x), y.to(ctx.settings.device)) for x, y in loader]


@register_stage
class HessianStage(Stage):
    """One unit per checkpoint; one Hessian operator per unit serves top-k, density and trace."""

    name = "hessian"
    config_field = "hessian"

    def validate(self, config: HessianConfig) -> None:
        validate(config)

    def units(self, config: HessianConfig) -> list[Unit]:
        return [Unit(f"hessian_{c}", {"checkpoint": c}) for c in config.checkpoints]

    def run(self, ctx: RunContext, config: HessianConfig, unit: Unit) -> list[dict]:
        c, checkpoint = config, unit.params["checkpoint"]
        t0 = time.perf_counter()
        model = ctx.load_model(checkpoint)
        batches = evaluation_batches(ctx, c.n_samples, c.batch_size)
        op = HessianOperator(model, F.cross_entropy, batches, bn_mode=c.bn_mode,
                             device=ctx.settings.device)
        k = min(c.k, op.dim)
        if k < c.k:
            log.warning("%s: hessian.k=%d exceeds the %d parameters; computing all %d "
                        "eigenvalues", ctx.identity.run_id, c.k, op.dim, k)
        seed = stream_seed(ctx.identity.seed, HESSIAN)
        top = top_eigenvalues(op, k, SolverOptions(which=c.which, tol=c.tol, max_iter=c.max_iter,
                                                   seed=seed, progress=ctx.progress),
                              backend=c.backend)
        rows = [{"metric": "hessian_eigenvalue", "value": v, "index": i + 1}
                for i, v in enumerate(top.eigenvalues)]
        rows += [{"metric": "hessian_residual", "value": v, "index": i + 1}
                 for i, v in enumerate(top.residuals)]
        num_hvp = top.num_hvp
        if c.density_runs:
            n_iter = min(c.density_iter, op.dim)
            tri = top.tridiagonal
            reuse = tri if tri is not None and len(tri.alphas) >= n_iter else None
            density = spectral_density(op, n_runs=c.density_runs, n_iter=n_iter, seed=seed + 1,
                                       reuse=reuse)
            num_hvp += density.num_hvp
            rows += [{"metric": "hessian_density_node", "value": v, "index": i}
                     for i, v in enumerate(density.nodes.ravel())]
            rows += [{"metric": "hessian_density_weight", "value": v, "index": i}
                     for i, v in enumerate(density.weights.ravel())]
        if c.trace_samples:
            tr = hessian_trace(op, n_samples=c.trace_samples, seed=seed + 2)
            num_hvp += tr.num_hvp
            rows += [{"metric": "hessian_trace", "value": tr.estimate},
                     {"metric": "hessian_trace_stderr", "value": tr.stderr}]
        rows += [{"metric": "hessian_num_hvp", "value": num_hvp},
                 {"metric": "hessian_converged", "value": float(top.converged)},
                 {"metric": "hessian_seconds", "value": time.perf_counter() - t0}]
        note = (f"checkpoint={checkpoint}; bn_mode={c.bn_mode}; backend={top.backend}; "
                f"which={c.which}; tol={c.tol}; n_samples={op.num_examples}"
                + (f"; k={k} (hessian.k={c.k} > the parameter count)" if k < c.k else ""))
        return [{"stage": unit.name, "note": note, **r} for r in rows]
