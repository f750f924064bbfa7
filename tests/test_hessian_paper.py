"""The paper's Hessian spectrum (one Lanczos run with full reorthogonalisation from the
all-ones vector, BN in train mode) against a float64 dense oracle: the m-step Lanczos
quadrature of the exact Hessian from the same start vector."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from landscape.hessian import HessianOperator, lanczos_quadrature, paper_spectrum


class Tiny(nn.Module):
    """conv -> BN -> ReLU -> GAP -> linear: 33 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = Tiny().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(24, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=gen)
    batches = [(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])]
    return model, batches, dense_train_mode_hessian(model, batches)


def dense_train_mode_hessian(model: nn.Module, batches) -> torch.Tensor:
    """Exact Hessian of sum_b (n_b / N) CE_b with BN on each batch's own statistics."""
    oracle = copy.deepcopy(model).train()
    oracle.bn.track_running_stats, oracle.bn.running_mean, oracle.bn.running_var = False, None, None
    oracle.bn.num_batches_tracked = None
    names = [n for n, _ in oracle.named_parameters()]
    shapes = [p.shape for _, p in oracle.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in oracle.parameters()])
    n_total = sum(len(yb) for _, yb in batches)

    def loss(t):
        params = dict(zip(names, (p.view(s) for p, s in
                                  zip(torch.split(t, [s.numel() for s in shapes]), shapes))))
        return sum(len(yb) / n_total * nn.functional.cross_entropy(
            functional_call(oracle, params, (xb,)), yb) for xb, yb in batches)

    # Reverse over reverse: torch.func.hessian's forward-over-reverse through train-mode
    # batch_norm gives an asymmetric matrix here (torch 2.14), double backward does not.
    hess = torch.autograd.functional.hessian(loss, theta)
    torch.testing.assert_close(hess, hess.T, rtol=0, atol=1e-12)
    return hess


def dense_lanczos(a: np.ndarray, start: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Textbook Lanczos with full reorthogonalisation on a dense matrix (the oracle)."""
    q = [start / np.linalg.norm(start)]
    alphas, betas = [], []
    for j in range(m):
        w = a @ q[j]
        alphas.append(q[j] @ w)
        for _ in range(2):
            w = w - np.array(q).T @ (np.array(q) @ w)
        b = np.linalg.norm(w)
        if j + 1 == m or b < 1e-12 * np.abs(a).max():
            break
        betas.append(b)
        q.append(w / b)
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    nodes, vecs = np.linalg.eigh(t)
    return nodes, vecs[0] ** 2


def operator(model, batches) -> HessianOperator:
    return HessianOperator(model, nn.functional.cross_entropy, batches, bn_mode="train")


@pytest.mark.parametrize("m", [5, 12, 20])
def test_nodes_and_weights_match_the_dense_lanczos_quadrature(problem, m):
    model, batches, hess = problem
    op = operator(model, batches)
    np.testing.assert_allclose(op(torch.ones(op.dim, dtype=torch.float64)).numpy(),
                               hess.numpy() @ np.ones(op.dim), rtol=1e-9, atol=1e-12)
    ours = paper_spectrum(op, n_iter=m)
    nodes, weights = dense_lanczos(hess.numpy(), np.ones(op.dim), m)
    assert ours.nodes.shape == (1, m) and ours.num_hvp == m
    np.testing.assert_allclose(ours.nodes[0], nodes, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.weights[0], weights, rtol=1e-6, atol=1e-10)
    assert ours.weights.sum() == pytest.approx(1.0)


def test_with_as_many_steps_as_parameters_the_quadrature_is_the_spectral_measure(problem):
    """Nodes = the eigenvalues the start vector touches; weights = its squared projections;
    every moment u^T H^p u is exact."""
    model, batches, hess = problem
    op = operator(model, batches)
    ours = paper_spectrum(op, n_iter=2 * op.dim)  # capped at dim; stops on an invariant space
    nodes, weights = ours.nodes[0], ours.weights[0]
    evals, evecs = np.linalg.eigh(hess.numpy())
    u = np.ones(op.dim) / np.sqrt(op.dim)
    proj = (evecs.T @ u) ** 2
    scale = np.abs(evals).max()
    touched = proj > 1e-10
    for lam, w in zip(evals[touched], proj[touched]):
        near = np.abs(nodes - lam) <= 1e-7 * scale
        assert near.any(), f"eigenvalue {lam} has no node"
    for node, w in zip(nodes, weights):
        if w > 1e-9:
            assert np.abs(evals - node).min() <= 1e-7 * scale
            mass = proj[np.abs(evals - node) <= 1e-7 * scale].sum()
            assert w == pytest.approx(mass, rel=1e-5, abs=1e-9)
    for p in range(6):
        assert (weights * nodes ** p).sum() == pytest.approx(
            u @ np.linalg.matrix_power(hess.numpy(), p) @ u, rel=1e-6, abs=1e-10 * scale ** p)


def test_start_vector_is_normalised_and_errors():
    a = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    res = lanczos_quadrature(lambda v: a @ v, 7 * torch.ones(5, dtype=torch.float64), 5)
    np.testing.assert_allclose(np.sort(res.nodes[0]), np.arange(1.0, 6.0), atol=1e-12)
    np.testing.assert_allclose(res.weights[0], np.full(5, 0.2), atol=1e-12)
    with pytest.raises(ValueError, match="nonzero"):
        lanczos_quadrature(lambda v: a @ v, torch.zeros(5, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="n_iter must be an integer >= 1"):
        lanczos_quadrature(lambda v: a @ v, torch.ones(5, dtype=torch.float64), 0)
