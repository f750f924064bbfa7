"""Top-k eigenpairs of a symmetric operator by thick-restart Lanczos with full reorthogonalisation.

Generic core: ``matvec`` is any callable ``v -> A v`` on flat tensors of length ``dim`` with
``A`` symmetric; settings come in a :class:`~landscape.hessian.options.SolverOptions`. The Krylov basis lives in the operator's dtype/device (vectors never leave
it; each step sends O(ncv) numbers to the host); the small projected matrix and its
eigenproblem are float64 on the host.

Algorithm (Wu & Simon 2000, thick restart). With an orthonormal basis ``V_m`` from ``m = ncv``
Lanczos steps, ``A V_m = V_m T_m + beta_m v_{m+1} e_m^T``. For a Ritz pair ``(theta, V_m y)`` of
``T_m`` the residual is ``||A V_m y - theta V_m y|| = |beta_m y_m|``. A pair is converged when
that residual is ``<= tol * max|theta|`` (tolerance relative to the spectral norm estimate
|lambda_max|). If not all k wanted pairs converged, keep ``l`` Ritz vectors (the k wanted plus
``min(n_converged, (m - k) / 2)`` next ones, ARPACK's rule), append ``v_{m+1}`` and extend to ``m``:
each restart costs at most ``m - l`` matvecs: after a restart the k pairs are tested
at every step (the relation above holds for any basis size) and the solver stops as soon as
they converge. Every new vector is orthogonalised against the whole basis
(classical Gram-Schmidt, repeated while it removes much: DGKS), so there are no ghost copies.
A single start vector cannot see exact eigenvalue multiplicities (as in ARPACK).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from landscape.hessian.options import SolverOptions, solver_options
from landscape.hessian.progress import progress_bar
from landscape.journal import Journal, saved, state_digest

MatVec = Callable[[Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class Tridiagonal:
    """Lanczos tridiagonal of one run from a uniformly random unit start vector.

    ``alphas`` (m,) diagonal, ``betas`` (m-1,) off-diagonal, float64; ``dim`` of the operator.
    A valid stochastic-Lanczos-quadrature sample (see :mod:`landscape.hessian.density`).
    """

    alphas: np.ndarray
    betas: np.ndarray
    dim: int


@dataclass(frozen=True, eq=False)
class TopEigenResult:
    """Top-k eigenvalues of a symmetric operator.

    eigenvalues: (k,) float64, descending (algebraically, for both ``which``).
    residuals: (k,) float64, ``||A x - lambda x||`` per pair (units of the eigenvalues). For
        Lanczos the Ritz estimate ``|beta_m y_m|``; for other backends computed explicitly.
    num_hvp: operator applications spent in total (including ``num_hvp_check``).
    num_hvp_check: applications spent only on explicit residuals after the solve.
    converged: every residual is ``<= tol * max|lambda|`` (Lanczos) or the backend reported
        convergence.
    eigenvectors: (k, dim) unit rows matching ``eigenvalues`` (operator dtype), or None.
    tridiagonal: the first Lanczos run (before any restart), reusable as an SLQ sample; None
        for backends that do not expose it.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    num_hvp: int
    converged: bool
    which: str
    tol: float
    backend: str
    eigenvectors: Tensor | None = None
    tridiagonal: Tridiagonal | None = None
    num_hvp_check: int = 0


def check_k(k: int, dim: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if k > dim:
        raise ValueError(f"k={k} exceeds the number of parameters ({dim}); choose k <= {dim}")


def default_ncv(k: int, dim: int) -> int:
    """Krylov basis size, ARPACK's default: min(dim, max(2k + 1, 20))."""
    return min(dim, max(2 * k + 1, 20))


def random_unit(dim: int, generator: torch.Generator, dtype: torch.dtype,
                device: torch.device, distribution: str = "gaussian") -> Tensor:
    """A unit vector with E[v v^T] = I / dim, drawn on the CPU (device-independent)."""
    if distribution == "gaussian":
        v = torch.randn(dim, generator=generator, dtype=torch.float64)
    else:
        v = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.float64) * 2 - 1
    return (v / v.norm()).to(dtype=dtype, device=device)


def orthogonalize_(w: Tensor, basis: Tensor) -> Tensor:
    """w <- (I - Q Q^T) w for orthonormal rows Q = basis; returns the coefficients Q^T w_0.
    Classical Gram-Schmidt, repeated (at most 3 passes) while a pass removes > ~30% of w."""
    coeffs = torch.zeros(len(basis), dtype=w.dtype, device=w.device)
    norm = w.norm()
    for _ in range(3):
        h = basis @ w
        w.sub_(basis.T @ h)
        coeffs += h
        new_norm = w.norm()
        if new_norm > 0.7 * norm:
            break
        norm = new_norm
    return coeffs


def ritz(proj: np.ndarray, beta: float, k: int, which: str, tol: float):
    """Ritz values/vectors of the projected matrix, the order of the wanted ones, their
    residual estimates ``|beta y_last|`` and which of the first k are converged."""
    theta, vecs = scipy.linalg.eigh(proj)
    order = np.argsort(-(theta if which == "LA" else np.abs(theta)), kind="stable")
    residual = np.abs(beta * vecs[-1])
    scale = max(float(np.abs(theta).max()), 1e-300)
    return theta, vecs, order, residual, residual[order[:k]] <= tol * scale


def lanczos_top_k(
    matvec: MatVec,
    dim: int,
    k: int,
    options: SolverOptions | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    start_vector: Tensor | None = None,
    journal: Journal | None = None,
    **overrides: object,
) -> TopEigenResult:
    """k eigenpairs of largest value (``which="LA"``) or magnitude (``"LM"``) of ``matvec``.

    Settings: ``options`` with ``overrides`` replaced (see :func:`solver_options`). ``tol``
    must be > 0; ``max_iter`` caps the number of matvecs (default ``max(1000, 10 * ncv)``);
    when the cap is reached the best Ritz pairs are returned with ``converged=False`` and a
    warning. ``check_residuals`` is ignored (the Ritz estimates ``|beta_m y_m|`` are free).
    ``start_vector``: the start vector (e.g. the top eigenvector of a nearby operator: a warm
    start; normalised here) instead of a random one; the pairs are then tested at every step
    from the first sweep on, and ``tridiagonal`` is None (not a random-start SLQ sample).
    Memory: ``(ncv + 1) * dim`` numbers of ``dtype`` for the basis.

    ``journal`` (:mod:`landscape.journal`): the solve saves its last restart (key
    ``"topk_restart"``: the kept basis, at most ``k + (ncv - k) / 2 + 1`` vectors, on the
    CPU, with the small state; when the solve has run 20 times as long as the last save took)
    and, given the journal again, goes on from it: the result equals the uninterrupted
    solve's bit for bit, and ``num_hvp`` counts every attempt's HVPs.
    """
    opts = solver_options(options, **overrides)
    which, tol, ncv, max_iter, seed = opts.which, opts.tol, opts.ncv, opts.max_iter, opts.seed
    check_k(k, dim)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    m = default_ncv(k, dim) if ncv is None else ncv
    if not isinstance(m, int) or not (k < m <= dim or k == m == dim):
        raise ValueError(
            f"ncv must be an integer with k < ncv <= dim ({k} < ncv <= {dim}); got {ncv!r}"
        )
    max_iter = max(1000, 10 * m) if max_iter is None else max_iter
    if not isinstance(max_iter, int) or max_iter < m:
        raise ValueError(f"max_iter must be an integer >= ncv ({m}), got {max_iter!r}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    basis = torch.empty(m + 1, dim, dtype=dtype, device=device)
    warm = start_vector is not None
    if not warm:
        basis[0] = random_unit(dim, gen, dtype, device)
    else:
        s = start_vector.detach().reshape(-1).to(dtype=dtype, device=device)
        if s.numel() != dim or not bool(torch.isfinite(s).all()) or not float(s.norm()) > 0:
            raise ValueError(f"start_vector must be a finite nonzero vector of length {dim}, "
                             f"got shape {tuple(start_vector.shape)}")
        basis[0] = s / s.norm()
    proj = np.zeros((m, m))
    start, num_hvp, first, beta = 0, 0, None, 0.0
    progress = _Progress(journal, {
        "k": k, "ncv": m, "dim": dim, "which": which, "tol": tol, "max_iter": max_iter,
        "seed": seed, "dtype": str(dtype),
        "start": state_digest("", {"start": {"v": basis[0]}})
        if warm and journal is not None else None})
    restart = progress.restored(basis, gen)
    if restart is not None:
        start, num_hvp, first, proj = (restart["start"], restart["num_hvp"], restart["first"],
                                       restart["proj"])
    # The number of HVPs is not known in advance (max_iter is only a cap): count them, and
    # show how many of the k pairs have converged after each restart.
    bar = progress_bar(total=None, enabled=opts.progress, desc="Lanczos HVPs")
    bar.update(num_hvp)
    while True:
        size, stop = m, False
        for j in range(start, m):
            w = matvec(basis[j]).to(dtype=dtype, device=device)
            num_hvp += 1
            bar.update()
            hv_norm = float(w.norm())
            h = orthogonalize_(w, basis[: j + 1]).double().cpu().numpy()
            proj[: j + 1, j] = proj[j, : j + 1] = h
            beta = float(w.norm())
            if j + 1 == dim:  # the basis spans the whole space: T_m is exact
                beta = 0.0
                break
            invariant = beta <= 100 * torch.finfo(dtype).eps * max(hv_norm, 1e-300)
            if invariant:
                w = random_unit(dim, gen, dtype, device)  # invariant subspace: fresh direction
                orthogonalize_(w, basis[: j + 1])
                beta, w = 0.0, w / w.norm()
            else:
                w = w / beta
            basis[j + 1] = w
            if j + 1 < m:
                proj[j + 1, j] = proj[j, j + 1] = beta
                # After a restart, test the k pairs at every step (an eigh of at most m x m,
                # negligible next to an HVP) instead of only when the basis is full. Not in
                # the first sweep (its whole tridiagonal is an SLQ sample) and not on an
                # invariant subspace (its pairs are exact but maybe not the top ones).
                if (first is not None or warm) and not invariant and j + 1 >= k:
                    *_, ok = ritz(proj[: j + 1, : j + 1], beta, k, which, tol)
                    if ok.all():
                        size, stop = j + 1, True
                        break
        if first is None and not warm:
            first = Tridiagonal(np.diag(proj).copy(), np.diag(proj, -1).copy(), dim)
        theta, vecs, order, residual, done = ritz(proj[:size, :size], beta, k, which, tol)
        bar.set_postfix_str(f"{int(done.sum())}/{k} converged", refresh=False)
        keep = k + min(int(done.sum()), (m - k) // 2)
        if stop or done.all() or num_hvp + (m - keep) > max_iter:
            break
        rotation = torch.from_numpy(vecs[:, order[:keep]].T.copy()).to(dtype=dtype, device=device)
        basis[:keep] = rotation @ basis[:m]
        basis[keep] = basis[m]
        coupling = beta * vecs[-1, order[:keep]]
        proj = np.zeros((m, m))
        proj[np.arange(keep), np.arange(keep)] = theta[order[:keep]]
        proj[keep, :keep] = proj[:keep, keep] = coupling
        start = keep
        progress.restart(basis[: keep + 1], proj, num_hvp, first, gen)
    bar.close()
    want = order[:k][np.argsort(-theta[order[:k]], kind="stable")]
    converged = bool(done.all())
    if not converged:
        warnings.warn(
            f"Lanczos stopped at max_iter={max_iter} matvecs with "
            f"{int(done.sum())}/{k} pairs converged (tol={tol:g}); raise max_iter or ncv",
            RuntimeWarning, stacklevel=2,
        )
    vectors = None
    if opts.return_eigenvectors:
        rot = torch.from_numpy(vecs[:, want].T.copy()).to(dtype=dtype, device=device)
        vectors = rot @ basis[:size]
    return TopEigenResult(
        eigenvalues=theta[want].copy(), residuals=residual[want].copy(), num_hvp=num_hvp,
        converged=converged, which=which, tol=tol, backend="lanczos",
        eigenvectors=vectors, tridiagonal=first,
    )


SAVE_OVERHEAD = 0.05  # a top-k solve's saving: at most this fraction of its time (see _Progress)


class _Progress:
    """A top-k solve's progress in a journal (see :func:`lanczos_top_k`): its last restart
    (``"topk_restart"``) with everything to go on from it (the kept basis, the projected
    matrix, the HVPs so far, the first sweep's tridiagonal, the random generator). A restart
    is saved when the solve has run at least ``1 / SAVE_OVERHEAD`` times as long as the last
    save took (a saved basis of a large network can take seconds to write), so saving costs
    at most that fraction of the solve."""

    def __init__(self, journal: Journal | None, params: dict) -> None:
        self.journal, self.params = journal, params
        self.since, self.cost = time.perf_counter(), 0.0

    def restored(self, basis: Tensor, gen: torch.Generator) -> dict | None:
        """The saved restart, its vectors written into ``basis`` and its generator state into
        ``gen``; None when none was saved."""
        state = saved(self.journal, "topk_restart", self.params)
        if state is None:
            return None
        basis[: len(state["basis"])] = state["basis"].to(basis)
        gen.set_state(state["rng"])
        first = state["first"]
        return {**state, "proj": state["proj"].numpy().copy(),
                "first": None if first is None else Tridiagonal(
                    first["alphas"].numpy(), first["betas"].numpy(), first["dim"])}

    def restart(self, kept: Tensor, proj: np.ndarray, num_hvp: int,
                first: Tridiagonal | None, gen: torch.Generator) -> None:
        """Save a restart (the kept basis and the vector after it) if it is time to."""
        now = time.perf_counter()
        if self.journal is None or (now - self.since) * SAVE_OVERHEAD < self.cost:
            return
        self.journal.put("topk_restart", {
            "params": self.params, "basis": kept.to("cpu", copy=True), "start": len(kept) - 1,
            "proj": torch.from_numpy(proj.copy()), "num_hvp": num_hvp, "rng": gen.get_state(),
            "first": None if first is None else {
                "alphas": torch.from_numpy(first.alphas), "betas": torch.from_numpy(first.betas),
                "dim": first.dim}})
        self.since = time.perf_counter()
        self.cost = self.since - now


def rayleigh_residuals(matvec: MatVec, vectors: Tensor, values: np.ndarray) -> np.ndarray:
    """Explicit ``||A x_i - lambda_i x_i||`` for unit rows ``x_i`` (one matvec per row)."""
    out = [float((matvec(x) - float(lam) * x).norm()) for x, lam in zip(vectors, values)]
    return np.asarray(out, dtype=np.float64) if out else np.zeros(0)

