"""Spectral density by stochastic Lanczos quadrature (SLQ) and the trace by Hutchinson.

SLQ (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019). For a unit start vector ``v``
with ``E[v v^T] = I / n`` (normalised Rademacher or Gaussian), ``m`` Lanczos steps give a
tridiagonal ``T = Y diag(nodes) Y^T``; the Gauss quadrature ``sum_i w_i f(node_i)`` with
``w_i = Y[0, i]^2`` approximates ``v^T f(A) v``, whose expectation is ``(1/n) tr f(A)``, i.e.
the integral of ``f`` against the spectral density ``(1/n) sum_j delta(t - lambda_j)``.
Runs use the plain three-term recurrence without reorthogonalisation (O(n) memory); loss of
orthogonality creates ghost copies of converged nodes that share the weight, which leaves the
quadrature valid. A reorthogonalised run from such a random start is an equally valid sample,
so the first run of :func:`~landscape.hessian.lanczos.lanczos_top_k` can be reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from landscape.hessian.lanczos import MatVec, Tridiagonal, orthogonalize_, random_unit
from landscape.hessian.operator import check_choice
from landscape.hessian.progress import progress_bar
from landscape.journal import Journal, saved, state_digest

DISTRIBUTIONS = ("rademacher", "gaussian")


@dataclass(frozen=True, eq=False)
class DensityResult:
    """SLQ estimate of the spectral density of a symmetric operator of size ``dim``.

    nodes: (n_runs, n_iter) float64 Ritz values (eigenvalues of each run's tridiagonal).
    weights: (n_runs, n_iter) float64 squared first components of the Ritz vectors; each row
        sums to 1. A run that found an invariant subspace after j < n_iter steps is exact
        with j nodes and is padded with zero-weight copies of its first node.
    num_hvp: operator applications spent (a reused run costs none).
    reused: whether the first row came from ``reuse``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int
    num_hvp: int
    reused: bool = False

    @property
    def mean(self) -> float:
        """Estimate of ``tr(A) / dim``: ``sum(weights * nodes) / n_runs``."""
        return float((self.weights * self.nodes).sum() / len(self.nodes))

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian-broadened density on ``grid``:
        ``(1/R) sum_r sum_i w_ri N(t; node_ri, sigma^2)``, in 1 / eigenvalue units; it
        integrates to 1 over the real line."""
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        t = np.asarray(grid, dtype=np.float64)[:, None]
        kernel = np.exp(-0.5 * ((t - self.nodes.reshape(1, -1)) / sigma) ** 2)
        kernel /= sigma * math.sqrt(2 * math.pi)
        return kernel @ self.weights.reshape(-1) / len(self.nodes)


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson estimate of ``tr(A)``: mean of ``z^T A z`` over Rademacher ``z``.

    estimate: the sample mean; stderr: its standard error (sample std with ddof=1 / sqrt(N));
    n_samples: N; num_hvp: operator applications (= N).
    """

    estimate: float
    stderr: float
    n_samples: int
    num_hvp: int


def quadrature(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (squared first eigenvector components) of a tridiagonal, float64."""
    nodes, vecs = scipy.linalg.eigh_tridiagonal(
        np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
    )
    weights = vecs[0] ** 2
    return nodes, weights / weights.sum()


def lanczos_tridiagonal(
    matvec: MatVec, v: torch.Tensor, n_iter: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Plain Lanczos (no reorthogonalisation) from unit ``v``: (alphas, betas, matvecs).
    Stops early on an invariant subspace (beta below ~100 eps ||A v||)."""
    eps = 100 * torch.finfo(v.dtype).eps
    alphas, betas = [], []
    prev, beta = torch.zeros_like(v), 0.0
    for _ in range(n_iter):
        w = matvec(v).to(v)
        alpha = float(torch.dot(w, v))
        scale = float(w.norm())
        alphas.append(alpha)
        w = w - alpha * v - beta * prev
        beta = float(w.norm())
        if len(alphas) == n_iter or beta <= eps * max(scale, 1e-300):
            break
        betas.append(beta)
        prev, v = v, w / beta
    return np.array(alphas), np.array(betas), len(alphas)


def slq_density(
    matvec: MatVec,
    dim: int,
    *,
    n_runs: int,
    n_iter: int,
    seed: int = 0,
    distribution: str = "rademacher",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    reuse: Tridiagonal | None = None,
    progress: bool = False,
    journal: Journal | None = None,
) -> DensityResult:
    """SLQ with ``n_runs`` runs of ``n_iter`` steps. ``reuse`` (e.g. the ``tridiagonal`` of a
    top-k result on the same operator, with at least ``n_iter`` steps) replaces the first run
    by its leading ``n_iter x n_iter`` block. ``journal`` (:mod:`landscape.journal`):
    every finished run is saved (key ``"slq"``), and a call that stopped goes on after them."""
    check_choice("distribution", distribution, DISTRIBUTIONS)
    for name, value in (("n_runs", n_runs), ("n_iter", n_iter)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if n_iter > dim:
        raise ValueError(f"n_iter={n_iter} exceeds the operator size {dim}")
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    if reuse is not None:
        if reuse.dim != dim:
            raise ValueError(f"reuse: tridiagonal of an operator of size {reuse.dim}, not {dim}")
        if len(reuse.alphas) < n_iter:
            raise ValueError(
                f"reuse: the tridiagonal has {len(reuse.alphas)} steps, fewer than "
                f"n_iter={n_iter}; use ncv >= n_iter in top_eigenvalues or pass reuse=None"
            )
        rows.append(quadrature(reuse.alphas[:n_iter], reuse.betas[: n_iter - 1]))
    gen = torch.Generator().manual_seed(seed)
    num_hvp, runs = 0, []
    params = {"dim": dim, "n_runs": n_runs, "n_iter": n_iter, "seed": seed,
              "distribution": distribution, "dtype": str(dtype), "reuse": reuse is not None}
    state = saved(journal, "slq", params)
    if state is not None:  # the runs a stopped call finished, and the generator after them
        runs, num_hvp = state["runs"], state["num_hvp"]
        gen.set_state(state["generator"])
        rows += [quadrature(a.numpy(), b.numpy()) for a, b in runs]
    bar = progress_bar(total=n_runs - len(rows), enabled=progress, desc="SLQ")
    while len(rows) < n_runs:
        v = random_unit(dim, gen, dtype, torch.device(device), distribution)
        alphas, betas, used = lanczos_tridiagonal(matvec, v, n_iter)
        num_hvp += used
        rows.append(quadrature(alphas, betas))
        if journal is not None:
            runs.append((torch.from_numpy(alphas), torch.from_numpy(betas)))
            journal.put("slq", {"params": params, "runs": list(runs), "num_hvp": num_hvp,
                                "generator": gen.get_state()})
        bar.update()
    bar.close()
    nodes = np.zeros((n_runs, n_iter))
    weights = np.zeros((n_runs, n_iter))
    for r, (x, w) in enumerate(rows):
        nodes[r] = x[0]  # padding nodes (weight 0) for runs that stopped early
        nodes[r, : len(x)], weights[r, : len(w)] = x, w
    return DensityResult(nodes, weights, dim, num_hvp, reused=reuse is not None)


def lanczos_quadrature(
    matvec: MatVec,
    start: torch.Tensor,
    n_iter: int,
    *,
    progress: bool = False,
    journal: Journal | None = None,
) -> DensityResult:
    """One ``n_iter``-step Lanczos run from ``start`` (normalised here) with full
    reorthogonalisation against every earlier basis vector: its Gauss quadrature (nodes =
    Ritz values, weights = squared first components of the Ritz vectors, summing to 1).

    This is the paper's spectrum (``start`` = the all-ones vector, 90 steps): a deterministic
    single run, not an average over random starts, so it estimates ``u^T f(H) u`` for that
    one ``u``. With ``n_iter >= dim`` the nodes are the eigenvalues whose eigenvectors ``u``
    touches and the weights the squared projections of ``u`` on them; the run stops early (with
    fewer nodes) on an invariant subspace. Memory: ``(n_iter + 1) * dim`` numbers of
    ``start``'s dtype. ``journal`` (:mod:`landscape.journal`): each step saves its new
    basis vector (key ``"lanczos_v<j>"``, on the CPU: ``n_iter * dim`` numbers in all) and the
    tridiagonal so far (``"lanczos"``); a run that stopped goes on from its last saved step."""
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
        raise ValueError(f"n_iter must be an integer >= 1, got {n_iter!r}")
    dim = start.numel()
    norm = float(start.norm())
    if not norm > 0:
        raise ValueError("start must be a nonzero vector")
    steps = min(n_iter, dim)
    basis = torch.empty(steps + 1, dim, dtype=start.dtype, device=start.device)
    basis[0] = start.reshape(-1) / norm
    alphas: list[float] = []
    betas: list[float] = []
    done = False
    params = {"n_iter": n_iter,
              "start": state_digest("", {"start": {"v": basis[0]}}) if journal else None}
    state = saved(journal, "lanczos", params)
    if state is not None:
        vectors = [journal.get(f"lanczos_v{i}") for i in range(1, len(state["betas"]) + 1)]
        if all(v is not None for v in vectors):  # else (a vector lost) start again
            alphas, betas, done = list(state["alphas"]), list(state["betas"]), state["done"]
            for i, v in enumerate(vectors, 1):
                basis[i] = v["v"].to(basis)
    bar = progress_bar(total=steps, enabled=progress, desc="Lanczos (paper)")
    bar.update(len(alphas))
    while not done:
        j = len(alphas)
        w = matvec(basis[j]).to(basis)
        scale = float(w.norm())
        h = orthogonalize_(w, basis[: j + 1])
        alphas.append(float(h[j]))
        beta = float(w.norm())
        bar.update()
        done = j + 1 == steps or beta <= 100 * torch.finfo(w.dtype).eps * max(scale, 1e-300)
        if not done:
            betas.append(beta)
            basis[j + 1] = w / beta
        if journal is not None:  # the vector first: a saved tridiagonal has all its vectors
            if not done:
                journal.put(f"lanczos_v{j + 1}", {"v": basis[j + 1].to("cpu", copy=True)})
            journal.put("lanczos", {"params": params, "alphas": list(alphas),
                                    "betas": list(betas), "done": done})
    bar.close()
    nodes, weights = quadrature(np.array(alphas), np.array(betas))
    return DensityResult(nodes[None], weights[None], dim, len(alphas))


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    *,
    n_samples: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    journal: Journal | None = None,
) -> TraceResult:
    """``tr(A) ~ (1/N) sum_s z_s^T A z_s`` with Rademacher ``z_s`` (unbiased; variance
    ``2 sum_{i != j} A_ij^2`` per sample). Needs ``n_samples >= 2`` for a standard error.
    ``journal`` (:mod:`landscape.journal`): the samples so far are saved (key
    ``"trace"``), and a call that stopped goes on after them."""
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    gen = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    params = {"dim": dim, "n_samples": n_samples, "seed": seed, "dtype": str(dtype)}
    state = saved(journal, "trace", params)
    if state is not None:
        samples = list(state["samples"])
        gen.set_state(state["generator"])
    bar = progress_bar(total=n_samples, enabled=progress, desc="Hutchinson")
    bar.update(len(samples))
    while len(samples) < n_samples:
        z = (torch.randint(0, 2, (dim,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)
        samples.append(float(torch.dot(matvec(z).to(z).double(), z.double())))
        if journal is not None:
            journal.put("trace", {"params": params, "samples": list(samples),
                                  "generator": gen.get_state()})
        bar.update()
    bar.close()
    values = np.array(samples)
    return TraceResult(
        estimate=float(values.mean()),
        stderr=float(values.std(ddof=1) / math.sqrt(n_samples)),
        n_samples=n_samples,
        num_hvp=n_samples,
    )
