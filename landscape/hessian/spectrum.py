"""Model-level Hessian analysis: build a :class:`HessianOperator`, call a generic core.

All functions take ``(model, loss_fn, batches)`` with ``loss_fn(outputs, targets)`` returning
the batch-mean loss, and analyse the Hessian of the mean loss over all examples in ``batches``
(no weight decay) w.r.t. ``params`` (default: all), with BatchNorm per ``bn_mode``:
``"eval"`` running stats (pyhessian's behaviour), ``"recalibrated"`` running stats recomputed
on ``batches`` first, ``"train"`` batch statistics. The model is never changed.
"""

from __future__ import annotations

import torch
from torch import nn

from landscape.hessian.backends import EIGEN_BACKENDS
from landscape.hessian.density import DensityResult, TraceResult, hutchinson_trace, slq_density
from landscape.hessian.lanczos import WHICH, Tridiagonal, TopEigenResult, check_k
from landscape.hessian.operator import (
    DEFAULT_HVP_METHOD, Batches, HessianOperator, LossFn, ParamSelection, check_choice,
)


def top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    k: int,
    *,
    which: str = "LA",
    tol: float = 1e-6,
    max_iter: int | None = None,
    ncv: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    bn_mode: str = "eval",
    params: ParamSelection = None,
    backend: str = "lanczos",
    method: str = DEFAULT_HVP_METHOD,
    return_eigenvectors: bool = False,
    check_residuals: bool = True,
    progress: bool = False,
) -> TopEigenResult:
    """The k largest (``which="LA"``) or largest-magnitude (``"LM"``) Hessian eigenvalues,
    descending, with residuals and the HVP count. ``tol`` is the residual tolerance relative to
    |lambda_max|; ``max_iter`` caps HVPs. ``backend``: ``"lanczos"`` (thick-restart Lanczos,
    default), ``"scipy"`` (ARPACK eigsh) or ``"pyhessian"`` (power iteration, eigenvalues
    only). ``ncv`` is the Krylov basis size (default ARPACK's ``max(2k+1, 20)``); use
    ``ncv >= n_iter`` to reuse the result's ``tridiagonal`` in :func:`spectral_density`.
    ``check_residuals=False`` skips the k explicit-residual HVPs of the scipy/pyhessian
    backends (their residuals are then NaN); Lanczos residuals are free estimates."""
    run = EIGEN_BACKENDS.get(backend)
    check_choice("which", which, WHICH)
    op = HessianOperator(model, loss_fn, batches, params=params, bn_mode=bn_mode, device=device,
                         method=method)
    check_k(k, op.dim)
    return run(op, k, which=which, tol=tol, max_iter=max_iter, ncv=ncv, seed=seed,
               return_eigenvectors=return_eigenvectors, check_residuals=check_residuals,
               progress=progress)


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    *,
    n_runs: int,
    n_iter: int,
    seed: int = 0,
    distribution: str = "rademacher",
    device: str | torch.device = "cpu",
    bn_mode: str = "eval",
    params: ParamSelection = None,
    method: str = DEFAULT_HVP_METHOD,
    reuse: Tridiagonal | None = None,
    progress: bool = False,
) -> DensityResult:
    """Hessian spectral density by stochastic Lanczos quadrature: ``n_runs`` runs of ``n_iter``
    steps; ``reuse`` (a top-k result's ``tridiagonal`` on the same Hessian) replaces one run."""
    op = HessianOperator(model, loss_fn, batches, params=params, bn_mode=bn_mode, device=device,
                         method=method)
    return slq_density(op, op.dim, n_runs=n_runs, n_iter=n_iter, seed=seed,
                       distribution=distribution, dtype=op.dtype, device=op.device, reuse=reuse,
                       progress=progress)


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    *,
    n_samples: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    bn_mode: str = "eval",
    params: ParamSelection = None,
    method: str = DEFAULT_HVP_METHOD,
    progress: bool = False,
) -> TraceResult:
    """Hutchinson estimate of tr(H) from ``n_samples`` Rademacher vectors, with its stderr."""
    op = HessianOperator(model, loss_fn, batches, params=params, bn_mode=bn_mode, device=device,
                         method=method)
    return hutchinson_trace(op, op.dim, n_samples=n_samples, seed=seed, dtype=op.dtype,
                            device=op.device, progress=progress)
