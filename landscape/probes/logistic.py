"""L2-regularised multinomial logistic regression in torch, with scikit-learn's objective.

scikit-learn's ``LogisticRegression(C=C)`` (1.9; ``l1_ratio=0``, ``fit_intercept=True``)
minimises over the coefficients ``W`` (K x p) and intercepts ``b`` (K,)::

    C * sum_i CE(softmax(W x_i + b), y_i) + 0.5 * ||W||_F^2        (b not penalised)

with K = the number of classes for three or more classes, and for two classes the binomial
loss on ONE row (K = 1: the logits are ``(0, w x + b)``, class 1 the positive one).
:func:`fit_logistic` minimises the same objective divided by ``C * n`` (the mean
cross-entropy plus ``||W||^2 / (2 C n)``, as scikit-learn's lbfgs solver does internally):
the same minimiser, and a gradient on the scale that ``tol`` refers to in both. Full-batch
L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search) from zero, on ``device`` in ``dtype``.
The multinomial intercepts are defined up to a common shift; both solvers start at zero, where
the intercepts' gradient sums to zero over classes, so they return intercepts summing to zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

HISTORY = 10  # L-BFGS correction pairs, as scipy's L-BFGS-B (maxcor): 2 x 10 x K x p numbers


@dataclass(frozen=True, eq=False)
class LogisticFit:
    """A fitted probe: ``coef`` (K, p) and ``intercept`` (K,) as scikit-learn's ``coef_`` and
    ``intercept_`` (K = 1 for two classes), ``classes`` the sorted labels; ``n_iter``: L-BFGS
    iterations; ``converged``: stopped before ``max_iter`` (gradient max-norm <= tol, or no
    further decrease of the objective)."""

    coef: Tensor
    intercept: Tensor
    classes: np.ndarray
    n_iter: int
    converged: bool

    def logits(self, x: Tensor) -> Tensor:
        """(n, classes) logits: for two classes ``(0, w x + b)``."""
        z = x.to(self.coef) @ self.coef.T + self.intercept
        return torch.cat([torch.zeros_like(z), z], dim=1) if len(self.classes) == 2 else z

    def predict(self, x: Tensor) -> np.ndarray:
        """The label of highest logit for each row of ``x`` (ties: the first class)."""
        return self.classes[self.logits(x).argmax(dim=1).cpu().numpy()]


def fit_logistic(
    x: Tensor | np.ndarray,
    y: np.ndarray,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-4,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LogisticFit:
    """Fit ``x`` (n, p) to the labels ``y`` (n,), minimising scikit-learn's objective (module
    docstring). ``tol``: stop when every partial derivative of the scaled objective is at most
    ``tol`` in absolute value (scikit-learn's lbfgs ``gtol``)."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if not (isinstance(C, (int, float)) and not isinstance(C, bool) and 0 < C < float("inf")):
        raise ValueError(f"C must be a finite number > 0, got {C!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    # row-major: the products with a column-major x (e.g. numpy's x[:, mask]) are many times slower
    x = torch.as_tensor(x).to(device=device, dtype=dtype).contiguous()
    y = np.asarray(y)
    if x.dim() != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (n, p) with n labels y, got {tuple(x.shape)} and {y.shape}")
    if not torch.isfinite(x).all():
        raise ValueError("x has non-finite values")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y holds {len(classes)} class(es); logistic regression needs 2 or more")
    n, p = x.shape
    rows = 1 if len(classes) == 2 else len(classes)
    onehot = F.one_hot(torch.as_tensor(codes, device=x.device), len(classes)).to(dtype)
    target = onehot[:, 1:] if rows == 1 else onehot
    w = torch.zeros(rows, p, dtype=dtype, device=x.device, requires_grad=True)
    b = torch.zeros(rows, dtype=dtype, device=x.device, requires_grad=True)
    penalty = 1.0 / (C * n)  # of 0.5 ||W||^2, in the objective divided by C n
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                            tolerance_grad=tol, tolerance_change=64 * torch.finfo(dtype).eps,
                            history_size=HISTORY, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def objective() -> Tensor:
        """Mean cross-entropy + penalty/2 ||W||^2, its gradient written into .grad by hand:
        d/dz of the mean cross-entropy is (softmax(z) - onehot) / n, so one (n, p) product
        gives the logits and one the gradient."""
        z = torch.addmm(b, x, w.T)
        if rows == 1:
            loss = F.binary_cross_entropy_with_logits(z, target, reduction="sum")
            residual = torch.sigmoid(z) - target
        else:
            log_p = torch.log_softmax(z, dim=1)
            loss = -(log_p * target).sum()
            residual = log_p.exp() - target
        residual /= n
        w.grad = torch.addmm(w, residual.T, x, beta=penalty)
        b.grad = residual.sum(dim=0)
        return loss / n + 0.5 * penalty * w.pow(2).sum()

    opt.step(objective)
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise FloatingPointError("the logistic-regression coefficients became non-finite")
    state = opt.state[w]
    n_iter = int(state.get("n_iter", 0))
    converged = n_iter < max_iter and int(state.get("func_evals", 0)) < 2 * max_iter
    coef, intercept = w.detach(), b.detach()
    if rows > 1:
        intercept = intercept - intercept.mean()  # the shift-invariant direction: sum zero
    return LogisticFit(coef=coef, intercept=intercept, classes=classes, n_iter=n_iter,
                       converged=converged)
