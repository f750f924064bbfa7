"""Hessian analysis against float64 dense oracles, closed forms and invariants."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

import landscape.hessian.operator as operator_module
from landscape.hessian import (
    HVP_METHODS, HessianOperator, NoSecondDerivativeError, SolverOptions, hessian_trace,
    hutchinson_trace, lanczos_top_k, lanczos_tridiagonal, quadrature, recalibrated_buffers,
    scipy_top_k, slq_density, solver_options, spectral_density, top_eigenvalues,
)
from landscape.hessian.lanczos import random_unit
from landscape.hessian.operator import TwiceDifferentiable
from landscape.models import create_model
from landscape.registry import UnknownNameError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two shared cores: a second intra-op thread makes small ops many times slower here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyCNN(nn.Module):
    """conv -> max-pool -> BN -> ReLU -> residual conv block -> GAP -> linear (211 params)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.pool(self.conv1(x))))
        h = F.relu(h + self.conv2(h))
        return self.fc(h.mean((2, 3)))


LOSS = nn.CrossEntropyLoss()


def tiny_model() -> TinyCNN:
    torch.manual_seed(0)
    model = TinyCNN().double()
    with torch.no_grad():  # non-trivial running stats, so eval differs from recalibrated/train
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(24, 1, 8, 8, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (24,), generator=gen)


def uneven_batches(x, y):
    return [(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])]


def flat_loss(model: nn.Module, x, y, names):
    """theta -> mean loss on (x, y) for the model in its current mode (oracle side)."""
    shapes = [p.shape for n, p in model.named_parameters() if n in names]
    sizes = [s.numel() for s in shapes]
    buffers = dict(model.named_buffers())

    def loss(theta):
        parts = [t.view(s) for t, s in zip(torch.split(theta, sizes), shapes)]
        state = {n: p for n, p in model.named_parameters()} | dict(zip(names, parts)) | buffers
        return LOSS(functional_call(model, state, (x,)), y)

    return loss


@pytest.fixture(scope="module")
def dense():
    """Exact float64 Hessian of the tiny CNN (BN in eval) by torch.func.hessian on one batch."""
    model, (x, y) = tiny_model(), tiny_data()
    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    model.eval()
    hess = torch.func.hessian(flat_loss(model, x, y, names))(theta)
    model.train()
    return model, x, y, hess


def exact_top(hess: torch.Tensor, k: int, which: str) -> np.ndarray:
    ev = np.linalg.eigvalsh(hess.numpy())
    top = ev[np.argsort(-ev if which == "LA" else -np.abs(ev))[:k]]
    return np.sort(top)[::-1]


def model_state(model: nn.Module):
    return (
        [(n, m.training) for n, m in model.named_modules()],
        {n: b.clone() for n, b in model.named_buffers()},
        [(n, p.requires_grad, None if p.grad is None else p.grad.clone())
         for n, p in model.named_parameters()],
        [(getattr(m, "momentum", None), getattr(m, "track_running_stats", None))
         for m in model.modules()],
    )


def assert_same_state(before, after):
    assert before[0] == after[0]
    assert before[1].keys() == after[1].keys()
    assert all(torch.equal(before[1][n], after[1][n]) for n in before[1])
    for (n, rg, g), (n2, rg2, g2) in zip(before[2], after[2]):
        assert (n, rg) == (n2, rg2)
        assert (g is None and g2 is None) or torch.equal(g, g2)
    assert before[3] == after[3]


# ---------------------------------------------------------------- HVP operator


@pytest.mark.parametrize("method", HVP_METHODS)
def test_hvp_matches_dense_hessian_with_uneven_batches(dense, method):
    model, x, y, hess = dense
    op = HessianOperator(model, LOSS, uneven_batches(x, y), method=method)
    vs = torch.randn(3, op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for v in vs:
        torch.testing.assert_close(op(v), hess @ v, rtol=1e-10, atol=1e-12)
    assert op.num_hvp == 3


def test_uneven_last_batch_equals_one_big_batch(dense):
    model, x, y, _ = dense
    v = torch.randn(211, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    one = HessianOperator(model, LOSS, [(x, y)])(v)
    split = HessianOperator(model, LOSS, uneven_batches(x, y))(v)
    torch.testing.assert_close(split, one, rtol=1e-12, atol=1e-14)
    weighted_wrong = sum(HessianOperator(model, LOSS, [b])(v) for b in uneven_batches(x, y)) / 3
    assert not torch.allclose(weighted_wrong, one, rtol=1e-6)  # the check above can fail


def test_hvp_matches_central_differences_of_gradient(dense):
    model, x, y, _ = dense
    op = HessianOperator(model, LOSS, uneven_batches(x, y))
    theta = op.parameters_vector()
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v /= v.norm()
    eps = 1e-5
    fd = (op.gradient(theta + eps * v) - op.gradient(theta - eps * v)) / (2 * eps)
    torch.testing.assert_close(op(v), fd, rtol=1e-6, atol=1e-8)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_hvp_is_symmetric(dense, seed):
    model, x, y, _ = dense
    op = HessianOperator(model, LOSS, uneven_batches(x, y))
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.randn(2, op.dim, generator=gen, dtype=torch.float64)
    uhv, vhu = torch.dot(u, op(v)), torch.dot(v, op(u))
    assert math.isclose(uhv, vhu, rel_tol=1e-10, abs_tol=1e-12)


def test_parameter_subset_is_the_dense_sub_block(dense):
    model, x, y, hess = dense
    names = ["conv2.weight", "fc.bias"]
    index, start = [], 0
    for n, p in model.named_parameters():
        if n in names:
            index += range(start, start + p.numel())
        start += p.numel()
    block = hess[index][:, index]
    for params in (names, lambda n, p: n in names):
        op = HessianOperator(model, LOSS, [(x, y)], params=params)
        res = top_eigenvalues(op, 5, tol=1e-10)
        np.testing.assert_allclose(res.eigenvalues, exact_top(block, 5, "LA"), rtol=1e-6)


# ---------------------------------------------------------------- top-k eigenvalues


@pytest.mark.parametrize("which", ["LA", "LM"])
def test_top_k_matches_dense_float64(dense, which):
    model, x, y, hess = dense
    op = HessianOperator(model, LOSS, uneven_batches(x, y))
    res = top_eigenvalues(op, 12, which=which, tol=1e-10, return_eigenvectors=True)
    assert res.converged and res.backend == "lanczos"
    np.testing.assert_allclose(res.eigenvalues, exact_top(hess, 12, which), rtol=1e-6)
    assert np.all(np.diff(res.eigenvalues) <= 0)
    vecs, lams = res.eigenvectors, torch.from_numpy(res.eigenvalues)
    explicit = (vecs @ hess - lams[:, None] * vecs).norm(dim=1)
    np.testing.assert_allclose(explicit.numpy(), res.residuals, atol=1e-11)
    assert res.residuals.max() <= 1e-10 * np.abs(res.eigenvalues).max()


@pytest.mark.parametrize("which", ["LA", "LM"])
def test_scipy_backend_matches_dense(dense, which):
    model, x, y, hess = dense
    res = top_eigenvalues(HessianOperator(model, LOSS, [(x, y)]), 6, which=which, tol=1e-10,
                          backend="scipy")
    np.testing.assert_allclose(res.eigenvalues, exact_top(hess, 6, which), rtol=1e-6)
    assert res.converged and res.num_hvp_check == 6 and res.num_hvp > 6
    assert res.residuals.max() < 1e-8


def test_pyhessian_backend_counts_hvps_and_leaves_model_untouched(dense):
    model, x, y, hess = dense
    model = copy.deepcopy(model).train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.conv1.bias.requires_grad_(False)
    before = model_state(model)
    op = HessianOperator(model, LOSS, uneven_batches(x, y))
    with pytest.raises(ValueError, match="largest magnitude .* not which='LA'"):
        top_eigenvalues(op, 2, backend="pyhessian")  # power iteration cannot honour LA
    res = top_eigenvalues(op, 2, which="LM", backend="pyhessian")
    assert_same_state(before, model_state(model))
    assert res.backend == "pyhessian" and res.eigenvectors is None
    assert res.num_hvp > res.num_hvp_check == 2
    assert res.eigenvalues[0] == pytest.approx(exact_top(hess, 1, "LM")[0], rel=1e-2)


def diagonal_operator(diag: np.ndarray):
    d = torch.from_numpy(diag)
    return lambda v: d * v


def outliers_and_bulk(n: int = 1500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([[100.0, 50.0, 30.0, 20.0, 10.0, -40.0], rng.uniform(-1, 1, n - 6)])


@pytest.mark.parametrize(("which", "k"), [("LA", 5), ("LA", 12), ("LM", 8)])
def test_synthetic_spectrum_top_k_and_hvp_budget(which, k):
    diag = outliers_and_bulk()
    res = lanczos_top_k(diagonal_operator(diag), len(diag), k, which=which, tol=1e-8)
    expected = np.sort(diag[np.argsort(-diag if which == "LA" else -np.abs(diag))[:k]])[::-1]
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, expected, rtol=1e-8)
    arpack = scipy_top_k(diagonal_operator(diag), len(diag), k, which=which, tol=1e-8)
    np.testing.assert_allclose(arpack.eigenvalues, expected, rtol=1e-8)
    # the target: at most ~1.5x ARPACK's matvecs at the same tolerance
    assert res.num_hvp <= 1.5 * (arpack.num_hvp - arpack.num_hvp_check)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(8, 40), k_frac=st.floats(0.05, 0.6), seed=st.integers(0, 10_000),
       which=st.sampled_from(["LA", "LM"]))
def test_random_dense_spectra(n, k_frac, seed, which):
    rng = np.random.default_rng(seed)
    ev = rng.permutation(np.linspace(-1, 2, n)) + rng.uniform(-1e-3, 1e-3, n)  # gaps >= ~0.07
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = torch.from_numpy((q * ev) @ q.T)
    k = max(1, int(k_frac * n))
    res = lanczos_top_k(lambda v: a @ v, n, k, which=which, tol=1e-10, seed=seed)
    np.testing.assert_allclose(res.eigenvalues, exact_top(a, k, which), rtol=1e-8, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(30, 120), k=st.integers(1, 12), log_tol=st.floats(-9, -2),
       seed=st.integers(0, 10_000), which=st.sampled_from(["LA", "LM"]))
def test_returned_pairs_meet_the_tolerance_whenever_the_solver_stops(n, k, log_tol, seed, which):
    """The contract behind the early stop (pairs are tested after every step of a restart, not
    only when the basis is full): each returned pair's true residual ||A x - lambda x|| is
    within tol * |lambda_max|, and the eigenvalue within that of the exact one."""
    rng = np.random.default_rng(seed)
    ev = np.concatenate([rng.uniform(2, 10, 3), rng.standard_normal(n - 3)])  # outliers, bulk
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = torch.from_numpy((q * ev) @ q.T)
    tol = 10.0 ** log_tol
    res = lanczos_top_k(lambda v: a @ v, n, k, which=which, tol=tol, seed=seed,
                        return_eigenvectors=True)
    assert res.converged
    bound = tol * np.abs(ev).max() * (1 + 1e-6) + 1e-12
    true = [float((a @ x - lam * x).norm()) for x, lam in zip(res.eigenvectors, res.eigenvalues)]
    assert max(true) <= bound
    assert np.abs(res.eigenvalues - exact_top(a, k, which)).max() <= bound


def test_invariant_subspace_and_k_equal_to_dim():
    diag = np.zeros(50)
    diag[:2] = [5.0, 3.0]  # Krylov space of dimension 3: Lanczos must restart from fresh vectors
    res = lanczos_top_k(diagonal_operator(diag), 50, 4, tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues, [5.0, 3.0, 0.0, 0.0], atol=1e-12)
    small = np.array([3.0, -1.0, 2.0, 0.5, 7.0, -4.0])
    res = lanczos_top_k(diagonal_operator(small), 6, 6, which="LM")
    np.testing.assert_allclose(res.eigenvalues, np.sort(small)[::-1], atol=1e-12)


def test_not_converging_within_max_iter_is_reported():
    diag = outliers_and_bulk()
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = lanczos_top_k(diagonal_operator(diag), len(diag), 12, tol=1e-12, max_iter=25)
    assert not res.converged and res.num_hvp <= 25


# ---------------------------------------------------------------- density and trace


def test_slq_density_normalised_and_moments_exact_for_diagonal():
    diag = outliers_and_bulk(n=400)
    n_iter = 12
    res = slq_density(diagonal_operator(diag), len(diag), n_runs=3, n_iter=n_iter, seed=0)
    assert res.nodes.shape == res.weights.shape == (3, n_iter) and res.num_hvp == 3 * n_iter
    np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, rtol=1e-12)
    # Rademacher start on a diagonal operator: v^T A^p v = tr(A^p)/n exactly, and Gauss
    # quadrature with n_iter nodes is exact for p <= 2 n_iter - 1.
    for p in range(1, 6):
        moment = (res.weights * res.nodes**p).sum() / 3
        assert moment == pytest.approx(np.mean(diag**p), rel=1e-8)
    assert res.mean == pytest.approx(diag.sum() / len(diag), rel=1e-10)
    np.testing.assert_allclose(res.nodes.max(axis=1), 100.0, rtol=1e-8)  # the outlier is a node
    grid = np.linspace(-60, 120, 20001)
    assert np.trapezoid(res.density(grid, sigma=0.5), grid) == pytest.approx(1.0, rel=1e-6)


def test_slq_mean_with_gaussian_starts_is_trace_over_n_within_noise():
    diag = outliers_and_bulk(n=400)
    n, runs = len(diag), 40
    res = slq_density(diagonal_operator(diag), n, n_runs=runs, n_iter=8, seed=1,
                      distribution="gaussian")
    # v = g/|g|: Var(v^T D v) ~ 2 Var(diag) / n per run
    sd = math.sqrt(2 * diag.var() / n / runs)
    assert abs(res.mean - diag.mean()) < 4 * sd


def test_top_k_tridiagonal_is_a_lanczos_run_and_can_be_reused():
    diag = outliers_and_bulk(n=300)
    op = diagonal_operator(diag)
    top = lanczos_top_k(op, 300, 5, ncv=30, seed=7, tol=1e-8)
    start = random_unit(300, torch.Generator().manual_seed(7), torch.float64, torch.device("cpu"))
    alphas, betas, _ = lanczos_tridiagonal(op, start, 10)
    np.testing.assert_allclose(top.tridiagonal.alphas[:10], alphas, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(top.tridiagonal.betas[:9], betas, rtol=1e-8, atol=1e-10)
    res = slq_density(op, 300, n_runs=3, n_iter=20, seed=0, reuse=top.tridiagonal)
    assert res.reused and res.num_hvp == 2 * 20
    nodes, weights = quadrature(top.tridiagonal.alphas[:20], top.tridiagonal.betas[:19])
    np.testing.assert_allclose(res.nodes[0], nodes)
    np.testing.assert_allclose(res.weights[0], weights)
    with pytest.raises(ValueError, match="fewer than n_iter"):
        slq_density(op, 300, n_runs=2, n_iter=40, reuse=top.tridiagonal)
    with pytest.raises(ValueError, match="size"):
        slq_density(op, 299, n_runs=2, n_iter=10, reuse=top.tridiagonal)


def test_slq_stops_on_invariant_subspace_with_zero_weight_padding():
    diag = np.repeat([1.0, 2.0, 3.0], 10)
    res = slq_density(diagonal_operator(diag), 30, n_runs=2, n_iter=8, seed=0)
    assert res.num_hvp == 2 * 3
    np.testing.assert_allclose(np.sort(res.nodes[:, :3], axis=1), [[1, 2, 3]] * 2, atol=1e-12)
    np.testing.assert_array_equal(res.weights[:, 3:], 0.0)
    np.testing.assert_allclose(res.weights[:, :3], 1 / 3, atol=1e-12)


def test_hutchinson_trace_exact_for_diagonal_and_stderr_matches_theory():
    diag = outliers_and_bulk(n=200)
    res = hutchinson_trace(diagonal_operator(diag), 200, n_samples=5)
    assert res.estimate == pytest.approx(diag.sum(), rel=1e-12) and res.stderr < 1e-9
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 20))
    a = torch.from_numpy(a + a.T)
    res = hutchinson_trace(lambda v: a @ v, 20, n_samples=4000, seed=3)
    off = a - torch.diag(torch.diag(a))
    theory = math.sqrt(2 * float((off**2).sum()) / 4000)  # Var(z^T A z) = 2 sum_{i!=j} A_ij^2
    assert res.stderr == pytest.approx(theory, rel=0.1)
    assert abs(res.estimate - float(torch.trace(a))) < 3 * res.stderr
    assert res.num_hvp == res.n_samples == 4000


def test_model_trace_and_density_mean_match_exact_trace(dense):
    model, x, y, hess = dense
    exact = float(torch.trace(hess))
    op = HessianOperator(model, LOSS, uneven_batches(x, y))
    tr = hessian_trace(op, n_samples=100, seed=0)
    assert tr.stderr > 0 and abs(tr.estimate - exact) < 3 * tr.stderr
    dens = spectral_density(op, n_runs=8, n_iter=15, seed=0)
    np.testing.assert_allclose(dens.weights.sum(axis=1), 1.0, rtol=1e-12)
    n = hess.shape[0]
    # mean of v^T H v over Rademacher v/sqrt(n): same estimator as Hutchinson, / n
    stderr = math.sqrt(2 * float((hess - torch.diag(torch.diag(hess))).pow(2).sum()) / 8) / n
    assert abs(dens.mean - exact / n) < 3 * stderr


# ---------------------------------------------------------------- BatchNorm modes


def rf_model() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, in_channels=1, pool_level=2, width=0.25)
    return model.double()


@pytest.mark.parametrize("bn_mode", ["eval", "recalibrated", "train"])
@pytest.mark.parametrize("training", [True, False])
def test_bn_modes_leave_the_model_unchanged(bn_mode, training):
    model = rf_model().train(training)
    model.features[1].train(not training)  # a mixed per-module mode must survive too
    model.classifier.weight.grad = torch.ones_like(model.classifier.weight)
    model.features[0].bias.requires_grad_(False)
    before = model_state(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(14, 1, 12, 12, generator=gen, dtype=torch.float64)
    batches = [(x[:8], torch.arange(8) % 3), (x[8:], torch.arange(6) % 3)]
    op = HessianOperator(model, LOSS, batches, bn_mode=bn_mode)
    top_eigenvalues(op, 2, tol=1e-4)
    spectral_density(op, n_runs=1, n_iter=3)
    hessian_trace(op, n_samples=2)
    assert_same_state(before, model_state(model))


def test_operator_on_a_fresh_rf_model_runs_modules_in_its_modes_and_restores_them():
    # A model that never saw this input size: nothing validates it on the first forward, so
    # during every HVP BatchNorm uses batch statistics (bn_mode="train") and all else is eval.
    model = rf_model().train()
    model.features[1].eval()  # a mixed per-module mode must survive too
    flags_before = {n: m.training for n, m in model.named_modules()}
    seen: dict[str, set[bool]] = {}
    hooks = [m.register_forward_hook(
        lambda m, _i, _o, n=n: seen.setdefault(n, set()).add(m.training))
        for n, m in model.named_modules() if n and not list(m.children())]
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op = HessianOperator(model, LOSS, [(x, torch.arange(6) % 3)], bn_mode="train")
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert not seen  # building the operator runs no forward
    first = op(v)  # a second product is the same: no call leaves state behind
    torch.testing.assert_close(op(v), first, rtol=0, atol=0)
    for h in hooks:
        h.remove()
    bn_names = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert bn_names and set(seen) == {n for n in flags_before if n and not
                                      list(dict(model.named_modules())[n].children())}
    assert all(seen[n] == ({True} if n in bn_names else {False}) for n in seen)
    assert {n: m.training for n, m in model.named_modules()} == flags_before


def test_one_operator_serves_top_k_density_and_trace_with_one_recalibration(monkeypatch):
    calls = []
    original = operator_module.recalibrated_buffers

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(operator_module, "recalibrated_buffers", counting)
    model = rf_model()
    x = torch.randn(10, 1, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batches = [(x[:6], torch.arange(6) % 3), (x[6:], torch.arange(4) % 3)]
    op = HessianOperator(model, LOSS, batches, bn_mode="recalibrated")
    top = top_eigenvalues(op, 2, tol=1e-4, ncv=20)
    dens = spectral_density(op, n_runs=2, n_iter=5, reuse=top.tridiagonal)
    tr = hessian_trace(op, n_samples=3)
    assert len(calls) == 1
    assert op.num_hvp == top.num_hvp + dens.num_hvp + tr.num_hvp
    # the same numbers as a fresh operator per call (each recalibrating again)
    again = top_eigenvalues(HessianOperator(model, LOSS, batches, bn_mode="recalibrated"), 2,
                            tol=1e-4, ncv=20)
    np.testing.assert_array_equal(again.eigenvalues, top.eigenvalues)
    assert len(calls) == 2


def test_solver_options_overrides_and_errors():
    assert solver_options(tol=1e-3).tol == 1e-3
    assert solver_options() == SolverOptions()
    base = SolverOptions(which="LM", seed=4)
    merged = solver_options(base, tol=1e-3, ncv=30)
    assert (merged.which, merged.seed, merged.tol, merged.ncv) == ("LM", 4, 1e-3, 30)
    assert base.tol == 1e-6  # frozen: overrides make a new object
    with pytest.raises(TypeError, match=r"'tolerance'.*valid options: which, tol, max_iter"):
        solver_options(tolerance=1e-3)
    with pytest.raises(TypeError, match="options must be a SolverOptions"):
        solver_options({"tol": 1e-3})
    with pytest.raises(ValueError, match="which must be one of 'LA', 'LM'"):
        SolverOptions(which="SA")
    with pytest.raises(ValueError, match="tol must be"):
        solver_options(tol=-1.0)
    with pytest.raises(ValueError, match="ncv must be"):
        solver_options(ncv=2.5)
    diag = outliers_and_bulk(n=200)
    a = lanczos_top_k(diagonal_operator(diag), 200, 3, SolverOptions(tol=1e-8, seed=2))
    b = lanczos_top_k(diagonal_operator(diag), 200, 3, tol=1e-8, seed=2)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    assert a.num_hvp == b.num_hvp


def hvp_oracle(model: nn.Module, x, y, v):
    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.autograd.functional.hvp(flat_loss(model, x, y, names), theta, v)[1]


def test_bn_train_and_recalibrated_match_independent_oracles(dense):
    model, x, y, _ = dense
    v = torch.randn(211, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    batch_stats = copy.deepcopy(model).train()
    batch_stats.bn.track_running_stats = False
    ours_train = HessianOperator(model, LOSS, [(x, y)], bn_mode="train")(v)
    torch.testing.assert_close(ours_train, hvp_oracle(batch_stats, x, y, v), rtol=1e-10, atol=1e-12)
    recal = copy.deepcopy(model).train()
    recal.bn.momentum = 1.0
    with torch.no_grad():
        recal(x)
    recal.eval()
    ours_recal = HessianOperator(model, LOSS, [(x, y)], bn_mode="recalibrated")(v)
    torch.testing.assert_close(ours_recal, hvp_oracle(recal, x, y, v), rtol=1e-10, atol=1e-12)
    ours_eval = HessianOperator(model, LOSS, [(x, y)], bn_mode="eval")(v)
    assert not torch.allclose(ours_eval, ours_recal, rtol=1e-3)


def test_recalibrated_running_stats_are_example_weighted(dense):
    model, x, y, _ = dense
    buffers = recalibrated_buffers(model, uneven_batches(x, y))
    with torch.no_grad():
        pre = model.pool(model.conv1(x))  # the BN input does not depend on BN statistics
    np.testing.assert_allclose(buffers["bn.running_mean"].numpy(), pre.mean((0, 2, 3)).numpy(),
                               rtol=1e-12)
    sizes = [10, 10, 4]
    chunks = torch.split(pre, sizes)
    var = sum(c.var((0, 2, 3), unbiased=True) * len(c) for c in chunks) / 24
    np.testing.assert_allclose(buffers["bn.running_var"].numpy(), var.numpy(), rtol=1e-12)
    assert not torch.equal(model.bn.running_mean, buffers["bn.running_mean"])


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors(dense):
    model, x, y, _ = dense
    b = [(x, y)]
    op = HessianOperator(model, LOSS, b)
    with pytest.raises(ValueError, match=r"k=500 exceeds the number of parameters \(211\)"):
        top_eigenvalues(op, 500)
    with pytest.raises(ValueError, match="k must be"):
        top_eigenvalues(op, 0)
    with pytest.raises(ValueError, match="which must be one of 'LA', 'LM'"):
        top_eigenvalues(op, 2, which="SA")
    with pytest.raises(ValueError, match="bn_mode must be one of 'eval', 'recalibrated', 'train'"):
        HessianOperator(model, LOSS, b, bn_mode="frozen")
    with pytest.raises(UnknownNameError, match="valid names: lanczos, pyhessian, scipy"):
        top_eigenvalues(op, 2, backend="arpack")
    with pytest.raises(ValueError, match="method must be one of"):
        HessianOperator(model, LOSS, b, method="finite_differences")
    with pytest.raises(ValueError, match="not supported by backend 'pyhessian'"):
        top_eigenvalues(HessianOperator(model, LOSS, b, bn_mode="train"), 2, which="LM",
                        backend="pyhessian")
    with pytest.raises(ValueError, match="unknown parameter names"):
        HessianOperator(model, LOSS, b, params=["fc.nope"])
    with pytest.raises(TypeError, match="params must be"):
        HessianOperator(model, LOSS, b, params="fc.weight")
    with pytest.raises(ValueError, match="selects no parameters"):
        HessianOperator(model, LOSS, b, params=lambda n, p: False)
    with pytest.raises(ValueError, match="non-empty list"):
        HessianOperator(model, LOSS, [])
    with pytest.raises(ValueError, match="same non-zero length"):
        HessianOperator(model, LOSS, [(x, y[:3])])
    with pytest.raises(ValueError, match="ncv"):
        top_eigenvalues(op, 5, ncv=5)
    with pytest.raises(ValueError, match="max_iter"):
        top_eigenvalues(op, 5, max_iter=3)
    with pytest.raises(ValueError, match="n_iter=300 exceeds"):
        spectral_density(op, n_runs=1, n_iter=300)
    with pytest.raises(ValueError, match="distribution must be one of"):
        spectral_density(op, n_runs=1, n_iter=3, distribution="uniform")
    with pytest.raises(ValueError, match="n_samples must be"):
        hessian_trace(op, n_samples=1)
    with pytest.raises(TypeError, match="op must be a HessianOperator"):
        top_eigenvalues(model, 2)
    with pytest.raises(TypeError, match="op must be a HessianOperator"):
        hessian_trace(model, n_samples=2)
    with pytest.raises(TypeError, match="'tolerance'"):
        top_eigenvalues(op, 2, tolerance=1e-3)
    with pytest.raises(ValueError, match="sigma"):
        slq_density(lambda v: v, 5, n_runs=1, n_iter=2).density(np.zeros(3), sigma=0.0)
    with pytest.raises(ValueError, match="backend 'scipy' needs k < dim"):
        scipy_top_k(lambda v: v, 4, 4)


# ---------------------------------------------------------------- ops without double backward


class HardGate(nn.Module):
    """conv -> ReLU -> squeeze-and-excitation gate with nn.Hardsigmoid (MobileNetV3's) ->
    F.hardsigmoid on the pooled features -> linear: torch has no derivative of
    hardsigmoid's backward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.se = nn.Linear(4, 4)
        self.gate = nn.Hardsigmoid()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))
        h = h * self.gate(self.se(h.mean((2, 3))))[:, :, None, None]
        return self.fc(F.hardsigmoid(h.mean((2, 3)) * 4 - 1))


def hard_gate_model() -> HardGate:
    torch.manual_seed(3)
    return HardGate().double()


@pytest.mark.parametrize("method", HVP_METHODS)
def test_hardsigmoid_models_get_hvps_equal_to_gradient_differences(method):
    """The hardsigmoid backward has no derivative in torch; the operator evaluates it as
    clamp(x + 3, 0, 6) / 6. Oracle: central differences of the gradient computed with torch's
    own hardsigmoid (its first derivative exists)."""
    model, (x, y) = hard_gate_model(), tiny_data()
    with pytest.raises(RuntimeError, match="hardsigmoid_backward is not implemented"):
        g = torch.autograd.grad(LOSS(model(x), y), list(model.parameters()), create_graph=True)
        torch.autograd.grad(sum(gi.sum() for gi in g), list(model.parameters()))
    op = HessianOperator(model, LOSS, uneven_batches(x, y), method=method)
    theta = op.parameters_vector()
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    v /= v.norm()
    eps = 1e-6
    fd = (op.gradient(theta + eps * v) - op.gradient(theta - eps * v)) / (2 * eps)
    hv = op(v)
    assert hv.abs().max() > 1e-3  # the gates are not all saturated: a real curvature test
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-8)


def test_hardsigmoid_substitute_is_bit_identical_and_pyhessian_runs_through_it():
    x = torch.linspace(-8, 8, 100_001)
    with TwiceDifferentiable():
        sub = F.hardsigmoid(x.clone(), inplace=True)
    assert torch.equal(sub, F.hardsigmoid(x))
    model, (x, y) = hard_gate_model(), tiny_data()
    op = HessianOperator(model, LOSS, [(x, y)])
    ours = top_eigenvalues(op, 1, which="LM", tol=1e-8).eigenvalues[0]
    theirs = top_eigenvalues(op, 1, which="LM", backend="pyhessian").eigenvalues[0]
    assert theirs == pytest.approx(ours, rel=1e-2)


def test_an_op_without_second_derivative_is_one_clear_error(monkeypatch):
    """Without the substitute, torch's own error becomes NoSecondDerivativeError naming it."""
    monkeypatch.setattr(TwiceDifferentiable, "__torch_function__",
                        lambda self, func, types, args=(), kwargs=None: func(*args,
                                                                              **(kwargs or {})))
    model, (x, y) = hard_gate_model(), tiny_data()
    op = HessianOperator(model, LOSS, [(x, y)])
    with pytest.raises(NoSecondDerivativeError,
                       match=r"^the model has an op without a second derivative in torch "
                             r"\(derivative for aten::hardsigmoid_backward is not implemented\)"):
        op(torch.ones(op.dim, dtype=torch.float64))


class TinyAttention(nn.Module):
    """Patch tokens -> one self-attention layer through F.scaled_dot_product_attention (the op
    every timm / torchvision transformer calls) -> mean token -> linear."""

    def __init__(self, explicit: bool = False) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 4, 4, stride=4)
        self.qkv = nn.Linear(4, 12)
        self.fc = nn.Linear(4, 3)
        self.explicit = explicit  # the oracle: the same attention as matmuls and a softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (N, 4 tokens, 4)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        if self.explicit:
            a = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        return self.fc((t + a).mean(1))


@pytest.mark.parametrize("method", HVP_METHODS)
def test_attention_models_get_the_exact_hessian(method):
    """torch's fused CPU attention kernel has no double backward; the operator runs attention
    on the math backend. Oracle: the dense float64 Hessian of the same model written with an
    explicit softmax."""
    torch.manual_seed(5)
    model = TinyAttention().double()
    x, y = tiny_data()
    with pytest.raises(RuntimeError, match="derivative for .*attention.* is not implemented"):
        g = torch.autograd.grad(LOSS(model(x), y), list(model.parameters()), create_graph=True)
        torch.autograd.grad(sum(gi.sum() for gi in g), list(model.parameters()))
    oracle = copy.deepcopy(model)
    oracle.explicit = True
    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    hess = torch.func.hessian(flat_loss(oracle, x, y, names))(theta)
    op = HessianOperator(model, LOSS, uneven_batches(x, y), method=method)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert hess.abs().max() > 1e-2
    torch.testing.assert_close(op(v), hess @ v, rtol=1e-9, atol=1e-11)


class CosineGate(nn.Module):
    """SwinV2's cosine similarity on a zero row (its padded windows): F.normalize of a key
    that is exactly zero, whose norm has a NaN double backward in torch."""

    def __init__(self, raw_norm: bool = False) -> None:
        super().__init__()
        self.q = nn.Linear(64, 4)
        self.k = nn.Linear(64, 4, bias=False)
        self.fc = nn.Linear(4, 3)
        self.raw_norm = raw_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        k = self.k(torch.cat([x[:, :32], torch.zeros_like(x[:, 32:])], 1) * (x[:, :1] > 0))
        if self.raw_norm:  # the same zero rows through a bare norm: no substitute
            kn = k / torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            kn = F.normalize(k, dim=-1)
        return self.fc(F.normalize(self.q(x), dim=-1) * kn * 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_substitute_is_bit_identical_with_the_same_gradient(dtype):
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(50, 6, 5, generator=gen, dtype=dtype)
    a[3] = 0
    a[:, 2] = 0
    for kw in ({}, {"dim": -1}, {"p": 1.0, "dim": 0}, {"dim": 2, "eps": 1e-3}):
        x1, x2 = a.clone().requires_grad_(), a.clone().requires_grad_()
        with TwiceDifferentiable():
            sub = F.normalize(x1, **kw)
        ref = F.normalize(x2, **kw)
        assert torch.equal(sub, ref), kw
        w = torch.randn(a.shape, generator=gen, dtype=dtype)
        (g1,) = torch.autograd.grad((sub * w).sum(), x1)
        (g2,) = torch.autograd.grad((ref * w).sum(), x2)
        assert torch.equal(g1, g2), kw


@pytest.mark.parametrize("method", HVP_METHODS)
def test_zero_rows_through_normalize_get_finite_exact_hvps(method):
    """Oracle: central differences of the gradient (F.normalize's first derivative is fine);
    about half the images have an all-zero key row."""
    torch.manual_seed(8)
    model, (x, y) = CosineGate().double(), tiny_data()
    op = HessianOperator(model, LOSS, uneven_batches(x, y), method=method)
    theta = op.parameters_vector()
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    eps = 1e-6
    fd = (op.gradient(theta + eps * v) - op.gradient(theta - eps * v)) / (2 * eps)
    hv = op(v)
    assert torch.isfinite(hv).all() and hv.abs().max() > 1e-3
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-8)


def test_a_non_finite_hvp_is_an_error_naming_the_first_parameter():
    model, (x, y) = CosineGate(raw_norm=True).double(), tiny_data()
    op = HessianOperator(model, LOSS, [(x, y)])
    with pytest.raises(NoSecondDerivativeError, match=r"^a Hessian-vector product is not "
                       r"finite \(first in k\.weight\) although the vector is"):
        op(torch.ones(op.dim, dtype=torch.float64))
