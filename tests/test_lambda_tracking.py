"""lambda_max tracking warm-started from the previous eigenvector (issue 28 item 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape.hessian import lanczos_top_k
from landscape.hessian.tracking import LambdaTracker


def _sym(n, seed, gap=5.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    evals = torch.linspace(-1, 1, n, dtype=torch.float64)
    evals[-1] = gap
    return q @ torch.diag(evals) @ q.T, evals, q


def test_a_start_at_the_eigenvector_converges_at_once_and_a_nearby_one_quickly():
    a, evals, q = _sym(60, 0)
    exact = q[:, -1]
    at = lanczos_top_k(lambda v: a @ v, 60, 1, tol=1e-8, start_vector=exact)
    assert at.num_hvp <= 2 and at.eigenvalues[0] == pytest.approx(5.0, rel=1e-10)
    assert at.tridiagonal is None  # a warm start is no SLQ sample
    g = torch.Generator().manual_seed(1)
    near = exact + 0.05 * torch.randn(60, generator=g, dtype=torch.float64)
    warm = lanczos_top_k(lambda v: a @ v, 60, 1, tol=1e-8, start_vector=near)
    cold = lanczos_top_k(lambda v: a @ v, 60, 1, tol=1e-8)
    assert warm.eigenvalues[0] == pytest.approx(cold.eigenvalues[0], rel=1e-8)
    assert warm.num_hvp < cold.num_hvp
    with pytest.raises(ValueError, match="start_vector must be a finite nonzero vector of length 60"):
        lanczos_top_k(lambda v: a @ v, 60, 1, start_vector=torch.zeros(60, dtype=torch.float64))
    with pytest.raises(ValueError, match="length 60"):
        lanczos_top_k(lambda v: a @ v, 60, 1, start_vector=torch.ones(59, dtype=torch.float64))


def _net_and_batches(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    return net, [(x[:16], y[:16]), (x[16:], y[16:])]


def _exact_top(net, batches):
    """Top eigenvalue of the dense float64 Hessian of the mean loss (torch.func)."""
    params = {n: p.detach() for n, p in net.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.reshape(-1) for p in params.values()])
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def loss(theta):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = theta[i:i + s.numel()].reshape(s)
            i += s.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(net, out, (x,)), y)

    h = torch.autograd.functional.hessian(loss, flat, vectorize=True)
    return float(torch.linalg.eigvalsh(h)[-1])


def test_the_warm_tracker_agrees_with_a_cold_run_and_the_dense_hessian_while_weights_move():
    net, batches = _net_and_batches()
    warm, cold = LambdaTracker(batches, tol=1e-6), LambdaTracker(batches, tol=1e-6, warm=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    hvps = {"warm": [], "cold": []}
    for step in range(4):
        w, c = warm.update(net), cold.update(net)
        exact = _exact_top(net, batches)
        assert w.converged and c.converged and (w.warm, c.warm) == (step > 0, False)
        assert w.value == pytest.approx(exact, rel=1e-5)
        assert c.value == pytest.approx(exact, rel=1e-5)
        hvps["warm"].append(w.num_hvp)
        hvps["cold"].append(c.num_hvp)
        x, y = batches[0]
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert sum(hvps["warm"][1:]) < sum(hvps["cold"][1:])


def test_bad_tracker_settings_are_refused():
    _, batches = _net_and_batches()
    with pytest.raises(ValueError, match="tol must be > 0"):
        LambdaTracker(batches, tol=0)
