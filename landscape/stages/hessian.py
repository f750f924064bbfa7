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

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from torch.nn import functional as F
from torch.utils.data import Subset

from landscape import results
from landscape.hessian import (
    BN_MODES, EIGEN_BACKENDS, hessian_trace, spectral_density, top_eigenvalues,
)
from landscape.stages import check_checkpoints
from landscape.train import derive_seed, make_loader

if TYPE_CHECKING:
    from landscape.pipeline import RunContext



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
                          ("backend", EIGEN_BACKENDS)):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"hessian.{name} must be one of {tuple(allowed)}, "
                             f"got {getattr(cfg, name)!r}")
    for name in ("k", "n_samples", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"hessian.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.density_runs < 0 or cfg.trace_samples < 0 or cfg.density_iter < 2:
        raise ValueError("hessian.density_runs and hessian.trace_samples must be >= 0 and "
                         "hessian.density_iter >= 2")


def variants(run_cfg) -> list[tuple[str, dict]]:
    validate(run_cfg.hessian)
    return [(c, {"checkpoint": c}) for c in run_cfg.hessian.checkpoints]


for _name, _desc in {
    "hessian_eigenvalue": "Hessian eigenvalue of the mean training loss; index = rank (1 = largest)",
    "hessian_residual": "||H v - lambda v|| of an eigenpair; index = rank",
    "hessian_trace": "Hutchinson estimate of the Hessian trace",
    "hessian_trace_stderr": "standard error of hessian_trace",
    "hessian_density_node": "SLQ node (Ritz value); index = run * n_iter + step",
    "hessian_density_weight": "SLQ weight of the node with the same index (a run sums to 1)",
    "hessian_num_hvp": "Hessian-vector products spent by the stage unit",
    "hessian_converged": "1 if every top-k residual is below tol * |lambda_max|",
    "hessian_seconds": "wall time of the stage unit, seconds",
}.items():
    results.register_metric(_name, _desc)


def evaluation_batches(ctx: "RunContext", n: int, batch_size: int) -> list:
    """The first ``n`` training images without augmentation, fixed order, on the device."""
    ds = ctx.data.train_eval
    ds = Subset(ds, range(min(n, len(ds))))
    loader = make_loader(ds, batch_size, ctx.settings, shuffle=False)
    return [(ctx.settings.to_device(x), y.to(ctx.settings.device)) for x, y in loader]


def hessian_stage(ctx: "RunContext", checkpoint: str) -> list[dict]:
    c = ctx.cfg.hessian
    t0 = time.perf_counter()
    model = ctx.load_model(checkpoint)
    batches = evaluation_batches(ctx, c.n_samples, c.batch_size)
    n_params = sum(p.numel() for p in model.parameters())
    k = min(c.k, n_params)
    common = dict(bn_mode=c.bn_mode, device=ctx.settings.device)
    seed = derive_seed(ctx.cfg.seed, 4242)
    top = top_eigenvalues(model, F.cross_entropy, batches, k, which=c.which, tol=c.tol,
                          max_iter=c.max_iter, seed=seed, backend=c.backend,
                          progress=ctx.cfg.progress, **common)
    rows = [{"metric": "hessian_eigenvalue", "value": v, "index": i + 1}
            for i, v in enumerate(top.eigenvalues)]
    rows += [{"metric": "hessian_residual", "value": v, "index": i + 1}
             for i, v in enumerate(top.residuals)]
    num_hvp = top.num_hvp
    if c.density_runs:
        n_iter = min(c.density_iter, n_params)
        tri = top.tridiagonal
        reuse = tri if tri is not None and len(tri.alphas) >= n_iter else None
        density = spectral_density(model, F.cross_entropy, batches, n_runs=c.density_runs,
                                   n_iter=n_iter, seed=seed + 1, reuse=reuse, **common)
        num_hvp += density.num_hvp
        flat_nodes, flat_weights = density.nodes.ravel(), density.weights.ravel()
        rows += [{"metric": "hessian_density_node", "value": v, "index": i}
                 for i, v in enumerate(flat_nodes)]
        rows += [{"metric": "hessian_density_weight", "value": v, "index": i}
                 for i, v in enumerate(flat_weights)]
    if c.trace_samples:
        tr = hessian_trace(model, F.cross_entropy, batches, n_samples=c.trace_samples,
                           seed=seed + 2, **common)
        num_hvp += tr.num_hvp
        rows += [{"metric": "hessian_trace", "value": tr.estimate},
                 {"metric": "hessian_trace_stderr", "value": tr.stderr}]
    rows += [{"metric": "hessian_num_hvp", "value": num_hvp},
             {"metric": "hessian_converged", "value": float(top.converged)},
             {"metric": "hessian_seconds", "value": time.perf_counter() - t0}]
    note = (f"checkpoint={checkpoint}; bn_mode={c.bn_mode}; backend={top.backend}; "
            f"which={c.which}; tol={c.tol}; n_samples={sum(len(y) for _, y in batches)}")
    return [{"stage": f"hessian_{checkpoint}", "note": note, **r} for r in rows]


