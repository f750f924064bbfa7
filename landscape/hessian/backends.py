"""Top-k eigenvalue backends: our Lanczos (default), scipy's ARPACK, and pyhessian 0.1.

A backend is ``fn(op: HessianOperator, k: int, options: SolverOptions) -> TopEigenResult``,
registered in ``EIGEN_BACKENDS``; it returns the k eigenvalues of largest value (``"LA"``) or
magnitude (``"LM"``) of the Hessian ``op`` (pyhessian: always largest magnitude). Backends
other than Lanczos compute residuals ``||H x - lambda x||`` explicitly (k extra HVPs, counted
in ``num_hvp_check``) unless ``options.check_residuals`` is False (residuals are then NaN).
A backend that saves its progress mid-solve takes ``journal=`` too and says so with the
attribute ``resumable = True`` (Lanczos); :func:`~landscape.hessian.top_eigenvalues` saves
every backend's finished result.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import numpy as np
import torch

from landscape.hessian.lanczos import (
    MatVec, TopEigenResult, check_k, default_ncv, lanczos_top_k, random_unit, rayleigh_residuals,
)
from landscape.hessian.operator import HessianOperator, second_derivatives
from landscape.hessian.options import SolverOptions, solver_options
from landscape.journal import Journal
from landscape.registry import Registry

EigenBackend = Callable[[HessianOperator, int, SolverOptions], TopEigenResult]
EIGEN_BACKENDS: Registry[EigenBackend] = Registry("hessian backend")


def list_backends() -> list[str]:
    return EIGEN_BACKENDS.names()


@EIGEN_BACKENDS.register("lanczos")
def _lanczos(op: HessianOperator, k: int, options: SolverOptions,
             journal: Journal | None = None) -> TopEigenResult:
    return lanczos_top_k(op, op.dim, k, options, dtype=op.dtype, device=op.device,
                         journal=journal)


_lanczos.resumable = True  # type: ignore[attr-defined]


@EIGEN_BACKENDS.register("scipy")
def _scipy(op: HessianOperator, k: int, options: SolverOptions) -> TopEigenResult:
    return scipy_top_k(op, op.dim, k, options, dtype=op.dtype, device=op.device)


def scipy_top_k(
    matvec: MatVec,
    dim: int,
    k: int,
    options: SolverOptions | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    **overrides: object,
) -> TopEigenResult:
    """scipy.sparse.linalg.eigsh (ARPACK, implicitly restarted Lanczos) on ``matvec``, with
    ``options`` and ``overrides`` merged by :func:`solver_options` (``progress`` is ignored).

    ARPACK's criterion: Ritz residual ``<= tol * |theta_i|`` per pair; ``max_iter`` (matvecs)
    maps to ARPACK restarts as ``max_iter // (ncv - k)``. Residuals are then computed explicitly
    (k more matvecs, counted in ``num_hvp`` and ``num_hvp_check``) unless ``check_residuals``
    is False. ``tol=0`` means machine precision (ARPACK's default). Needs ``k < dim``.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    opts = solver_options(options, **overrides)
    which, tol, max_iter, ncv, seed = opts.which, opts.tol, opts.max_iter, opts.ncv, opts.seed
    check_residuals = opts.check_residuals
    check_k(k, dim)
    if k >= dim:
        raise ValueError(f"backend 'scipy' needs k < dim; got k={k}, dim={dim}")
    device = torch.device(device)
    m = default_ncv(k, dim) if ncv is None else ncv
    count = [0]

    def apply(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return matvec(v.to(dtype=dtype, device=device)).double().cpu().numpy()

    v0 = random_unit(dim, torch.Generator().manual_seed(seed), torch.float64, torch.device("cpu"))
    restarts = None if max_iter is None else max(1, max_iter // max(1, m - k))
    operator = LinearOperator((dim, dim), matvec=apply, dtype=np.float64)
    try:
        values, vectors = eigsh(operator, k=k, which=which, tol=tol, ncv=m, v0=v0.numpy(),
                                maxiter=restarts)
        converged = True
    except ArpackNoConvergence as err:
        values, vectors, converged = err.eigenvalues, err.eigenvectors, False
    order = np.argsort(-values, kind="stable")
    solver_hvp = count[0]
    rows = torch.from_numpy(vectors[:, order].T.copy()).to(dtype=dtype, device=device)
    checks = len(order) if check_residuals else 0
    residuals = (rayleigh_residuals(matvec, rows, values[order]) if check_residuals
                 else np.full(len(order), np.nan))
    return TopEigenResult(
        eigenvalues=values[order].astype(np.float64), residuals=residuals,
        num_hvp=solver_hvp + checks, num_hvp_check=checks, converged=converged,
        which=which, tol=tol, backend="scipy",
        eigenvectors=rows if opts.return_eigenvectors else None,
    )


@EIGEN_BACKENDS.register("pyhessian")
def pyhessian_top_k(
    op: HessianOperator,
    k: int,
    options: SolverOptions | None = None,
    **overrides: object,
) -> TopEigenResult:
    """pyhessian 0.1 ``hessian(...).eigenvalues(top_n=k)`` (power iteration with deflation,
    its own defaults ``maxIter=100, tol=1e-3`` on the relative change of the eigenvalue);
    of the options (merged as in :func:`solver_options`) ``max_iter``, ``ncv`` and ``progress``
    are ignored, ``seed`` seeds torch's global RNG (forked) for its random start vectors.

    Power iteration finds the eigenvalues of largest MAGNITUDE: ``which`` must be ``"LM"``
    (``"LA"`` is refused rather than answered with other eigenvalues). It runs
    on a deep copy of the model (pyhessian sets eval mode, zeroes gradients and uses the
    parameters with ``requires_grad``), so the caller's model is untouched. Residuals are
    computed explicitly with our operator; ``converged`` means all residuals
    ``<= tol * max|lambda|`` (False when ``check_residuals=False``). ``bn_mode="train"`` is
    not possible (pyhessian forces eval mode).
    """
    from pyhessian import hessian as PyHessian

    opts = solver_options(options, **overrides)
    check_k(k, op.dim)
    if opts.which != "LM":
        raise ValueError(f"backend 'pyhessian' finds the eigenvalues of largest magnitude "
                         f"(power iteration), not which={opts.which!r}: use which='LM' with it, "
                         "or the backend 'lanczos' or 'scipy'")
    if op.bn_mode == "train":
        raise ValueError("bn_mode='train' is not supported by backend 'pyhessian' (it forces "
                         "eval mode); use bn_mode 'eval' or 'recalibrated', or another backend")
    model = copy.deepcopy(op.model).to(op.device)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(op.buffers[name])
    selected = set(op.names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in selected)
        p.grad = None
    old_dtype = torch.get_default_dtype()
    count = [0]
    with warnings.catch_warnings(), torch.random.fork_rng(
        devices=[op.device] if op.device.type == "cuda" else []
    ):
        warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
        torch.manual_seed(opts.seed)
        try:
            torch.set_default_dtype(op.dtype)  # pyhessian allocates vectors in the default dtype
            with second_derivatives():  # F.hardsigmoid as in our operator
                engine = PyHessian(model, op.loss_fn, dataloader=op.batches,
                                   cuda=op.device.type == "cuda")
                inner = engine.dataloader_hv_product

                def counted(v):
                    count[0] += 1
                    return inner(v)

                engine.dataloader_hv_product = counted
                values, vectors = engine.eigenvalues(top_n=k)
        finally:
            torch.set_default_dtype(old_dtype)
    order = np.argsort(-np.asarray(values), kind="stable")
    rows = torch.stack([op.flatten([t.detach() for t in vectors[i]]) for i in order])
    rows = rows / rows.norm(dim=1, keepdim=True)
    lams = np.asarray(values, dtype=np.float64)[order]
    checks = k if opts.check_residuals else 0
    residuals = rayleigh_residuals(op, rows, lams) if opts.check_residuals else np.full(k, np.nan)
    scale = max(float(np.abs(lams).max()), 1e-300)
    return TopEigenResult(
        eigenvalues=lams, residuals=residuals, num_hvp=count[0] + checks, num_hvp_check=checks,
        converged=bool((residuals <= opts.tol * scale).all()), which=opts.which, tol=opts.tol,
        backend="pyhessian", eigenvectors=rows if opts.return_eigenvectors else None,
    )
