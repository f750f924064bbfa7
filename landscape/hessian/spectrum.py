"""Hessian analysis on one :class:`HessianOperator`: top-k eigenvalues, SLQ density, trace.

The caller builds the operator once, ``op = HessianOperator(model, loss_fn, batches,
params=..., bn_mode=..., device=..., method=...)``: ``v -> H v`` for the Hessian ``H`` of the
mean loss over all examples in ``batches`` w.r.t. the selected parameters, with BatchNorm in
the chosen mode (``"recalibrated"`` running stats are recomputed once, at construction). The
three functions below share it; each only applies ``op`` (the model is never changed) and
reports its own HVP count. A :class:`~landscape.hessian.masked.MaskedOperator` (the
sub-matrix ``H[S, S]`` on the unpruned weights) is accepted wherever a HessianOperator is,
except by the pyhessian backend.
"""

from __future__ import annotations

import dataclasses

import torch

from landscape.hessian.backends import EIGEN_BACKENDS
from landscape.hessian.density import (
    DensityResult, TraceResult, hutchinson_trace, lanczos_quadrature, slq_density,
)
from landscape.hessian.lanczos import TopEigenResult, Tridiagonal, check_k
from landscape.hessian.masked import MaskedOperator
from landscape.hessian.operator import HessianOperator
from landscape.hessian.options import SolverOptions, solver_options
from landscape.journal import Journal, saved


Operator = HessianOperator | MaskedOperator
# Backends that only apply the operator (any v -> A v); pyhessian needs the model itself.
MATVEC_BACKENDS = ("lanczos", "scipy")


def _check_operator(op: object) -> None:
    if not isinstance(op, (HessianOperator, MaskedOperator)):
        raise TypeError(
            f"op must be a HessianOperator (build it once: HessianOperator(model, loss_fn, "
            f"batches, ...)) or a MaskedOperator(op, masks), got {type(op).__name__}"
        )


def top_eigenvalues(
    op: Operator,
    k: int,
    options: SolverOptions | None = None,
    *,
    backend: str = "lanczos",
    journal: Journal | None = None,
    **overrides: object,
) -> TopEigenResult:
    """The k largest (``which="LA"``) or largest-magnitude (``"LM"``) eigenvalues of ``H``,
    descending, with residuals ``||H x - lambda x||`` and the HVP count.

    Settings: ``options`` with ``overrides`` replaced (:func:`solver_options`); convergence is
    ``residual <= tol * |lambda_max|``. ``backend``: ``"lanczos"`` (thick-restart Lanczos,
    default), ``"scipy"`` (ARPACK eigsh) or ``"pyhessian"`` (power iteration, largest
    magnitude). Use ``ncv >= n_iter`` to reuse the result's ``tridiagonal`` in
    :func:`spectral_density`. ``check_residuals=False`` skips the k explicit-residual HVPs of
    the scipy/pyhessian backends (their residuals are then NaN); Lanczos residuals are free.
    ``journal`` (:mod:`landscape.journal`): the finished result is saved (key
    ``"top"``, eigenvectors on the CPU) and returned by a later call with the same settings
    instead of solving again; a Lanczos solve stopped on the way goes on from its last saved
    restart (:func:`~landscape.hessian.lanczos.lanczos_top_k`), a scipy or pyhessian one
    starts again.
    """
    run = EIGEN_BACKENDS.get(backend)
    opts = solver_options(options, **overrides)
    _check_operator(op)
    if isinstance(op, MaskedOperator) and backend not in MATVEC_BACKENDS:
        raise ValueError(
            f"backend {backend!r} needs a HessianOperator (it rebuilds the model); for a "
            f"MaskedOperator use backend {' or '.join(map(repr, MATVEC_BACKENDS))}"
        )
    check_k(k, op.dim)
    params = {"k": k, "dim": op.dim, "backend": backend,
              **{f: getattr(opts, f) for f in ("which", "tol", "max_iter", "ncv", "seed",
                                              "return_eigenvectors", "check_residuals")}}
    state = saved(journal, "top", params)
    if state is not None:
        return _top_result(state["result"], op)
    result = (run(op, k, opts, journal=journal) if getattr(run, "resumable", False)
              else run(op, k, opts))
    if journal is not None:
        journal.put("top", {"params": params, "result": _top_state(result)})
    return result


def _top_state(result: TopEigenResult) -> dict:
    """A top-k result as tensors and plain values (a journal's state)."""
    state = dataclasses.asdict(dataclasses.replace(result, tridiagonal=None, eigenvectors=None))
    for name in ("eigenvalues", "residuals"):
        state[name] = torch.from_numpy(state[name])
    if result.eigenvectors is not None:
        state["eigenvectors"] = result.eigenvectors.detach().to("cpu", copy=True)
    if result.tridiagonal is not None:
        tri = result.tridiagonal
        state["tridiagonal"] = {"alphas": torch.from_numpy(tri.alphas),
                                "betas": torch.from_numpy(tri.betas), "dim": tri.dim}
    return state


def _top_result(state: dict, op: Operator) -> TopEigenResult:
    """The :class:`TopEigenResult` a journal's state holds, eigenvectors on ``op``'s device."""
    state = dict(state)
    for name in ("eigenvalues", "residuals"):
        state[name] = state[name].numpy()
    if state["eigenvectors"] is not None:
        state["eigenvectors"] = state["eigenvectors"].to(device=op.device)
    if state["tridiagonal"] is not None:
        tri = state["tridiagonal"]
        state["tridiagonal"] = Tridiagonal(tri["alphas"].numpy(), tri["betas"].numpy(),
                                           tri["dim"])
    return TopEigenResult(**state)


def spectral_density(
    op: Operator,
    *,
    n_runs: int,
    n_iter: int,
    seed: int = 0,
    distribution: str = "rademacher",
    reuse: Tridiagonal | None = None,
    progress: bool = False,
    journal: Journal | None = None,
) -> DensityResult:
    """Spectral density ``(1/n) sum_j delta(t - lambda_j)`` of ``H`` by stochastic Lanczos
    quadrature: ``n_runs`` runs of ``n_iter`` steps from unit ``distribution`` start vectors;
    ``reuse`` (a top-k result's ``tridiagonal`` on the same operator) replaces one run;
    ``journal``: every finished run is saved, a call that stopped goes on after them."""
    _check_operator(op)
    return slq_density(op, op.dim, n_runs=n_runs, n_iter=n_iter, seed=seed,
                       distribution=distribution, dtype=op.dtype, device=op.device, reuse=reuse,
                       progress=progress, journal=journal)


def paper_spectrum(op: Operator, *, n_iter: int = 90, progress: bool = False,
                   journal: Journal | None = None) -> DensityResult:
    """The paper's Hessian spectrum: one ``n_iter``-step Lanczos run with full
    reorthogonalisation from the normalised all-ones vector; nodes (Ritz values) and weights
    (squared first components of the Ritz vectors), plotted Gaussian-smoothed
    (:meth:`DensityResult.density`). Not the top eigenvalues: see :func:`top_eigenvalues`.
    ``journal``: each step is saved (its basis vector, on the CPU), and a run that stopped
    goes on from its last saved step."""
    _check_operator(op)
    start = torch.ones(op.dim, dtype=op.dtype, device=op.device)
    return lanczos_quadrature(op, start, n_iter, progress=progress, journal=journal)


def hessian_trace(
    op: Operator,
    *,
    n_samples: int,
    seed: int = 0,
    progress: bool = False,
    journal: Journal | None = None,
) -> TraceResult:
    """Hutchinson estimate ``tr(H) ~ (1/N) sum_s z_s^T H z_s`` from ``N = n_samples``
    Rademacher vectors ``z_s``, with its standard error; ``journal``: the samples so far are
    saved, and a call that stopped goes on after them."""
    _check_operator(op)
    return hutchinson_trace(op, op.dim, n_samples=n_samples, seed=seed, dtype=op.dtype,
                            device=op.device, progress=progress, journal=journal)
