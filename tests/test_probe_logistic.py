"""The torch logistic-regression probe against scikit-learn's LogisticRegression (the oracle):
one objective, so one minimiser, checked in float64 to tight tolerances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from landscape.probes import BACKENDS, fit_logistic, probe_accuracy


def _classes(n: int, p: int, k: int, seed: int, shift: float = 1.5):
    """Overlapping Gaussian classes: class c shifted by ``shift`` along feature c mod p."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.standard_normal((n, p))
    x[np.arange(n), y % p] += shift
    return x, y


def _objective(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, y: np.ndarray,
               C: float) -> float:
    """scikit-learn's objective, C * summed cross-entropy + ||W||^2 / 2, written out."""
    z = x @ coef.T + intercept
    if coef.shape[0] == 1:  # two classes: logits (0, z)
        z = np.hstack([np.zeros_like(z), z])
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-C * log_p[np.arange(len(y)), y].sum() + 0.5 * (coef ** 2).sum())


@pytest.mark.parametrize("n, p, k, C", [
    (60, 8, 3, 1.0),
    (40, 100, 4, 0.1),  # more features than samples
    (80, 30, 5, 10.0),
    (50, 20, 2, 3.0),  # two classes: scikit-learn's binomial form, one coefficient row
])
def test_coefficients_intercepts_and_accuracy_equal_scikit_learn(n, p, k, C) -> None:
    x, y = _classes(n, p, k, seed=n + p)
    xt, yt = _classes(200, p, k, seed=1)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x, y)
    fit = fit_logistic(x, y, C=C, tol=1e-10, max_iter=10_000, dtype=torch.float64)
    assert fit.converged and fit.coef.dtype == torch.float64
    assert fit.coef.shape == ref.coef_.shape == ((1 if k == 2 else k), p)
    intercept = ref.intercept_ - (ref.intercept_.mean() if k > 2 else 0.0)  # a free shift
    scale = 1.0 + np.abs(ref.coef_).max()
    np.testing.assert_allclose(fit.coef.numpy(), ref.coef_, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(fit.intercept.numpy(), intercept, rtol=0, atol=1e-5 * scale)
    ours = _objective(fit.coef.numpy(), fit.intercept.numpy(), x, y, C)
    assert ours == pytest.approx(_objective(ref.coef_, ref.intercept_, x, y, C), rel=1e-10)
    assert np.array_equal(fit.predict(torch.from_numpy(xt)), ref.predict(xt))
    assert np.array_equal(fit.predict(torch.from_numpy(x)), ref.predict(x))


def test_labels_keep_their_values_and_order() -> None:
    x, y = _classes(60, 6, 3, seed=3)
    labels = np.array([7, -2, 40])[y]
    fit = fit_logistic(x, labels, dtype=torch.float64)
    assert fit.classes.tolist() == [-2, 7, 40]
    assert set(fit.predict(torch.from_numpy(x))) <= {-2, 7, 40}


def test_both_backends_give_the_same_probe_on_a_well_posed_problem() -> None:
    xtr, ytr = _classes(400, 10, 4, seed=4)
    xte, yte = _classes(200, 10, 4, seed=5)
    torch_r, sk_r = (probe_accuracy(xtr, ytr, xte, yte, layer="fc", backend=b)
                     for b in BACKENDS)
    assert (torch_r.backend, sk_r.backend) == BACKENDS
    assert torch_r.converged and sk_r.converged
    assert 0.5 < sk_r.accuracy < 1.0  # neither trivial nor hopeless
    assert abs(torch_r.accuracy - sk_r.accuracy) <= 1 / 200
    assert abs(torch_r.train_accuracy - sk_r.train_accuracy) <= 1 / 400


def test_max_iter_reached_is_reported_not_raised() -> None:
    x, y = _classes(40, 100, 4, seed=6)
    fit = fit_logistic(x, y, max_iter=2, tol=0.0)
    assert fit.n_iter == 2 and not fit.converged
    assert probe_accuracy(x, y, x, y, max_iter=1).converged is False


def test_bad_input_is_a_clear_error() -> None:
    x, y = _classes(30, 4, 3, seed=7)
    with pytest.raises(ValueError,
                       match=r"backend must be one of \('torch', 'sklearn'\), got 'cuml'"):
        probe_accuracy(x, y, x, y, backend="cuml")
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        fit_logistic(x, y, dtype=torch.float16)
    with pytest.raises(ValueError, match="C must be a finite number > 0, got 0"):
        fit_logistic(x, y, C=0)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1, got 0"):
        fit_logistic(x, y, max_iter=0)
    with pytest.raises(ValueError, match="y holds 1 class"):
        fit_logistic(x, np.zeros(30))
    with pytest.raises(ValueError, match=r"x must be \(n, p\) with n labels y, got \(30, 4\) and "
                                         r"\(29,\)"):
        fit_logistic(x, y[:29])
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="x has non-finite values"):
        fit_logistic(bad, y)
