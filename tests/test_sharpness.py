"""Worst-case (adaptive) sharpness against closed forms on quadratic and linear losses, its
invariances on small networks, and sharpness_ratio."""

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

from landscape.geometry.sharpness import Sharpness, sharpness_ratio, worst_case_sharpness
from landscape.pruning import recalibrate_bn


class Quadratic(nn.Module):
    """``forward(x) = 0.5 (w - c)^T A (w - c) + b^T w`` (ignores x) over the parameters
    ``a`` and ``z`` concatenated, ``w = [a, z]``; with ``loss_fn = lambda out, y: out``."""

    def __init__(self, w: torch.Tensor, A: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                 split: int) -> None:
        super().__init__()
        self.a = nn.Parameter(w[:split].clone())
        self.z = nn.Parameter(w[split:].clone())
        self.register_buffer("A", A)
        self.register_buffer("b", b)
        self.register_buffer("c", c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.cat([self.a, self.z]) - self.c
        return 0.5 * d @ self.A @ d + self.b @ torch.cat([self.a, self.z])


def value(out, y):
    return out


ONE_BATCH = [(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))]


def spd(n: int, eigenvalues, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T


def quadratic(w, A=None, b=None, c=None, split=None) -> Quadratic:
    n = len(w)
    zeros = torch.zeros(n, dtype=torch.float64)
    return Quadratic(w, zeros.new_zeros(n, n) if A is None else A,
                     zeros if b is None else b, zeros if c is None else c,
                     n // 2 if split is None else split)


def gaussian(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64) + shift


def trust_region_max(A: np.ndarray, g: np.ndarray, rho: float) -> float:
    """max_{||d|| <= rho} g.d + 0.5 d.A.d for symmetric A and g with a component along A's
    top eigenvector: d = (mu I - A)^-1 g with mu > lambda_max and ||d|| = rho (bisection)."""
    lam, vec = np.linalg.eigh(A)
    gt = vec.T @ g

    def norm(mu):
        return np.linalg.norm(gt / (mu - lam))

    lo, hi = lam[-1] + 1e-14, lam[-1] + np.linalg.norm(g) / rho + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if norm(mid) > rho else (lo, mid)
    d = vec @ (gt / (0.5 * (lo + hi) - lam))
    return float(g @ d + 0.5 * d @ A @ d)


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("rho", [0.05, 1.0])
def test_standard_sharpness_at_a_minimum_is_half_lambda_max_rho_squared(rho):
    n = 8
    A = spd(n, np.linspace(1.0, 5.0, n), seed=0)
    c = gaussian(n, 1)
    model = quadratic(c.clone(), A=A, c=c)  # at the minimum: the gradient is exactly zero
    res = worst_case_sharpness(model, value, ONE_BATCH, rho=rho, adaptive=False, steps=300)
    assert res.sharpness == pytest.approx(0.5 * 5.0 * rho**2, rel=1e-4)
    assert res.sharpness <= 0.5 * 5.0 * rho**2 * (1 + 1e-12)  # a feasible point: a lower bound
    assert res.delta_norm == pytest.approx(rho, rel=1e-12)
    assert res.loss == pytest.approx(0.0, abs=1e-15)
    assert res.perturbed_loss - res.loss == res.sharpness


def test_adaptive_sharpness_at_a_minimum_is_half_lambda_max_of_TAT():
    n, eta = 8, 0.1
    A = spd(n, np.linspace(1.0, 5.0, n), seed=2)
    c = gaussian(n, 3)
    model = quadratic(c.clone(), A=A, c=c)
    T = torch.diag(c.abs() + eta)
    exact = 0.5 * float(torch.linalg.eigvalsh(T @ A @ T)[-1]) * 0.3**2
    res = worst_case_sharpness(model, value, ONE_BATCH, rho=0.3, eta=eta, steps=400)
    assert res.sharpness == pytest.approx(exact, rel=1e-4)
    # The standard (T = I) value differs: the geometry matters.
    assert 0.5 * 5.0 * 0.3**2 != pytest.approx(exact, rel=1e-2)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), rho=st.floats(1e-3, 10.0), eta=st.floats(0.0, 1.0),
       adaptive=st.booleans())
def test_linear_loss_sharpness_is_rho_times_norm_of_T_b(seed, rho, eta, adaptive):
    n = 7
    w, b = gaussian(n, seed), gaussian(n, seed + 1)
    model = quadratic(w, b=b)
    res = worst_case_sharpness(model, value, ONE_BATCH, rho=rho, adaptive=adaptive, eta=eta,
                               steps=3)
    t = w.abs() + eta if adaptive else torch.ones(n, dtype=torch.float64)
    exact = rho * float((t * b).norm())
    assert res.sharpness == pytest.approx(exact, rel=1e-9)
    assert res.delta_norm == pytest.approx(rho, rel=1e-12)
    assert res.loss == pytest.approx(float(b @ w), rel=1e-12, abs=1e-12)


def test_non_stationary_quadratic_matches_the_trust_region_maximum():
    n, rho = 6, 0.7
    A = spd(n, [-1.0, 0.5, 1.0, 2.0, 3.0, 4.0], seed=4)  # indefinite
    w, b = gaussian(n, 5), gaussian(n, 6)
    model = quadratic(w, A=A, b=b)
    grad = A @ w + b
    exact = trust_region_max(A.numpy(), grad.numpy(), rho)
    res = worst_case_sharpness(model, value, ONE_BATCH, rho=rho, adaptive=False, steps=300)
    assert res.sharpness == pytest.approx(exact, rel=1e-6)
    # Bounds: the gradient direction alone gives at least rho |g| + 0.5 lambda_min rho^2,
    # nothing exceeds rho |g| + 0.5 lambda_max rho^2.
    g = float(grad.norm())
    assert rho * g - 0.5 * rho**2 <= res.sharpness <= rho * g + 0.5 * 4.0 * rho**2


def test_params_restricts_the_perturbation():
    A = torch.block_diag(spd(3, [1.0, 2.0, 6.0], seed=7), spd(2, [3.0, 9.0], seed=8))
    c = gaussian(5, 9)
    model = quadratic(c.clone(), A=A, c=c, split=3)
    rho = 0.2
    only_a = worst_case_sharpness(model, value, ONE_BATCH, rho=rho, adaptive=False, steps=200,
                                  params=["a"])
    only_z = worst_case_sharpness(model, value, ONE_BATCH, rho=rho, adaptive=False, steps=200,
                                  params=lambda name, p: name == "z")
    both = worst_case_sharpness(model, value, ONE_BATCH, rho=rho, adaptive=False, steps=200)
    assert (only_a.num_params, only_z.num_params, both.num_params) == (3, 2, 5)
    assert only_a.sharpness == pytest.approx(0.5 * 6.0 * rho**2, rel=1e-4)
    assert only_z.sharpness == pytest.approx(0.5 * 9.0 * rho**2, rel=1e-4)
    assert both.sharpness == pytest.approx(0.5 * 9.0 * rho**2, rel=1e-4)


def test_adaptive_with_zero_weights_never_moves_them():
    # Loss b.w with w = (0, 1): with eta = 0 the first coordinate cannot move, T b = (0, b1).
    w, b = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([5.0, 2.0],
                                                                       dtype=torch.float64)
    res = worst_case_sharpness(quadratic(w, b=b, split=1), value, ONE_BATCH, rho=0.5, steps=3)
    assert res.sharpness == pytest.approx(0.5 * 2.0, rel=1e-12)
    res = worst_case_sharpness(quadratic(w, b=b, split=1), value, ONE_BATCH, rho=0.5, eta=0.5,
                               steps=3)
    assert res.sharpness == pytest.approx(0.5 * math.hypot(0.5 * 5.0, 1.5 * 2.0), rel=1e-12)


# ---------------------------------------------------------------- networks


class Net(nn.Module):
    """conv -> BN -> ReLU -> GAP -> linear (63 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(5, 6)
        self.l2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


def net_problem():
    torch.manual_seed(0)
    model = Net().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=gen)
    return model, [(x[:12], y[:12]), (x[12:], y[12:])]


def snapshot(model):
    return ([(n, m.training) for n, m in model.named_modules()],
            {n: t.clone() for n, t in model.state_dict().items()},
            [(m.momentum, m.track_running_stats) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d)])


def assert_unchanged(model, before):
    modes, state, bn = before
    assert [(n, m.training) for n, m in model.named_modules()] == modes
    assert [(m.momentum, m.track_running_stats) for m in model.modules()
            if isinstance(m, nn.BatchNorm2d)] == bn
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[n], t) for n, t in state.items())  # bit-identical
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bn_mode", ["eval", "train", "recalibrated"])
def test_model_unchanged_and_losses_match_an_independent_forward(bn_mode):
    model, batches = net_problem()
    before = snapshot(model)
    res = worst_case_sharpness(model, F.cross_entropy, batches, rho=0.05, steps=5,
                               bn_mode=bn_mode)
    assert_unchanged(model, before)
    assert isinstance(res, Sharpness) and res.num_params == 63 and res.num_grad_evals == 6
    assert 0 < res.sharpness == res.perturbed_loss - res.loss
    assert res.delta_norm <= 0.05 * (1 + 1e-12)
    # L(w) by a plain forward on a copy: eval uses running stats, train batch stats,
    # recalibrated the running stats recomputed once on the batches.
    twin = copy.deepcopy(model)
    if bn_mode == "recalibrated":
        recalibrate_bn(twin, batches)
    twin.train(bn_mode == "train")
    with torch.no_grad():
        expected = sum(float(F.cross_entropy(twin(x), y)) * len(x) for x, y in batches) / 20
    assert res.loss == pytest.approx(expected, rel=1e-12)
    if bn_mode == "recalibrated":  # and they are not the trained ones
        with torch.no_grad():
            trained = copy.deepcopy(model).eval()
            stale = sum(float(F.cross_entropy(trained(x), y)) * len(x) for x, y in batches) / 20
        assert res.loss != pytest.approx(stale, rel=1e-6)


@pytest.mark.parametrize("adaptive", [True, False])
def test_sharpness_is_non_negative_and_non_decreasing_in_rho(adaptive):
    model, batches = net_problem()
    rhos = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    values = [worst_case_sharpness(model, F.cross_entropy, batches, rho=r, adaptive=adaptive,
                                   steps=10).sharpness for r in rhos]
    assert values[0] >= 0
    assert all(a <= b for a, b in zip(values, values[1:])), values
    # Small rho: first order, S ~ rho ||T g||.
    assert values[1] / values[0] == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize("alpha", [4.0, 0.3])
def test_adaptive_sharpness_is_invariant_to_relu_rescaling(alpha):
    torch.manual_seed(0)
    model = MLP().double()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    batches = [(x, torch.randint(0, 3, (16,), generator=gen))]
    scaled = copy.deepcopy(model)
    with torch.no_grad():  # the same function: relu(a z) = a relu(z) for a > 0
        scaled.l1.weight.mul_(alpha)
        scaled.l1.bias.mul_(alpha)
        scaled.l2.weight.div_(alpha)
    kw = dict(rho=0.1, steps=10)
    a, b = (worst_case_sharpness(m, F.cross_entropy, batches, **kw) for m in (model, scaled))
    assert b.loss == pytest.approx(a.loss, rel=1e-12)
    assert b.sharpness == pytest.approx(a.sharpness, rel=1e-8)
    s, t = (worst_case_sharpness(m, F.cross_entropy, batches, adaptive=False, **kw)
            for m in (model, scaled))
    assert t.sharpness != pytest.approx(s.sharpness, rel=1e-2)  # standard sharpness is not


# ---------------------------------------------------------------- errors and the ratio


def test_bad_arguments_are_clear_errors():
    model = quadratic(gaussian(4, 0), b=gaussian(4, 1))

    def run(**kw):
        args = dict(rho=0.1) | kw
        return worst_case_sharpness(model, value, ONE_BATCH, **args)

    for rho in (0.0, -1.0, math.inf, math.nan, True, "0.1"):
        with pytest.raises(ValueError, match="rho must be a finite real number > 0"):
            run(rho=rho)
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            run(steps=steps)
    for step_size in (0.0, -0.1, math.inf):
        with pytest.raises(ValueError, match="step_size must be a finite real number > 0"):
            run(step_size=step_size)
    for eta in (-0.1, math.nan):
        with pytest.raises(ValueError, match="eta must be a finite real number >= 0"):
            run(eta=eta)
    with pytest.raises(ValueError, match="adaptive must be True or False"):
        run(adaptive=1)
    with pytest.raises(ValueError, match="bn_mode must be one of 'eval', 'recalibrated', 'train'"):
        run(bn_mode="frozen")
    with pytest.raises(ValueError, match="unknown parameter names"):
        run(params=["nope"])
    with pytest.raises(ValueError, match="non-empty list"):
        worst_case_sharpness(model, value, [], rho=0.1)
    with pytest.raises(ValueError, match="the only feasible delta is 0"):
        worst_case_sharpness(quadratic(torch.zeros(2, dtype=torch.float64)), value, ONE_BATCH,
                             rho=0.1)


def test_sharpness_ratio():
    assert sharpness_ratio(3.0, 12.0) == 0.25
    H = spd(5, [0.5, 1.0, 1.5, 2.0, 5.0], seed=0)
    lam = float(torch.linalg.eigvalsh(H)[-1])
    assert sharpness_ratio(lam, float(H.trace())) == pytest.approx(0.5, rel=1e-12)
    assert sharpness_ratio(np.float64(-1.0), np.float32(4.0)) == -0.25
    for trace in (0.0, -2.0, math.inf, math.nan, None):
        with pytest.raises(ValueError, match="trace must be a finite number > 0"):
            sharpness_ratio(1.0, trace)
    for top in (math.nan, math.inf, "1"):
        with pytest.raises(ValueError, match="top_eigenvalue must be a finite number"):
            sharpness_ratio(top, 1.0)
