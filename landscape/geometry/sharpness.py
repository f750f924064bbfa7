"""Worst-case (adaptive) sharpness, and the ratio of the top Hessian eigenvalue to its trace.

Worst-case sharpness (Keskar et al. 2017; adaptive: Kwon et al. 2021, ASAM; Andriushchenko et
al. 2023, "A modern look at the relationship between sharpness and generalization") of the
mean loss ``L`` over fixed batches at the weights ``w``::

    S_rho(w) = max_{||T^-1 delta||_2 <= rho} L(w + delta) - L(w),

with ``T = diag(|w| + eta)`` (adaptive) or ``T = I`` (standard). In the scaled variable
``u = T^-1 delta`` the constraint is the Euclidean ball ``||u|| <= rho`` and the gradient is
``T grad L``, so each step of projected gradient ascent is
``u <- P_rho(u + a T g / ||T g||)``, i.e. ``delta`` moves along ``T^2 g`` normalised in the
T-norm (coordinates with ``T_ii = 0`` never move). Units: ``S`` and the losses in loss units,
``rho`` and the step size in T-norm units (dimensionless relative weight changes when
adaptive with ``eta = 0``). The ascent finds a local maximiser, so ``S`` is a lower bound of
the true maximum (reached after one step for a linear loss; approached geometrically for a
quadratic, like a power iteration, see the tests).

Differences from the reference code (tml-epfl/sharpness-vs-generalization, L2 version): one
perturbation for the mean loss over all batches (theirs: one per batch, averaged); the step
follows the exact gradient in ``u`` (theirs: ``|w| g / ||g||``) and the projection is the
exact one in ``u`` (theirs: a bisection onto the ellipsoid in ``delta``); no momentum, and the
step halves with a restart from the best point after a step that does not increase the loss
(theirs: APGD's checkpoint rule).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from landscape.hessian.operator import (
    Batches, HessianOperator, LossFn, ParamSelection, model_mode,
)


@dataclass(frozen=True)
class Sharpness:
    """Worst-case sharpness found by projected gradient ascent.

    sharpness: ``L(w + delta) - L(w) >= 0`` for the best ``delta`` seen (``delta = 0`` counts).
    loss: ``L(w)``; perturbed_loss: ``L(w + delta)`` (loss units).
    delta_norm: ``||T^-1 delta||_2`` of that ``delta`` (``<= rho`` up to rounding).
    step_size: the initial step (T-norm units). num_params: perturbed coordinates.
    num_grad_evals: loss-and-gradient evaluations over all batches (``steps + 1``).
    """

    sharpness: float
    loss: float
    perturbed_loss: float
    rho: float
    adaptive: bool
    eta: float
    steps: int
    step_size: float
    delta_norm: float
    num_params: int
    num_grad_evals: int


def _real(name: str, value: object, *, positive: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or (value <= 0 if positive else value < 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite real number {need}, got {value!r}")
    return float(value)


def worst_case_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    *,
    rho: float,
    adaptive: bool = True,
    steps: int = 20,
    step_size: float | None = None,
    eta: float = 0.0,
    params: ParamSelection = None,
    bn_mode: str = "eval",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Sharpness:
    """``max_{||T^-1 delta|| <= rho} L(w + delta) - L(w)`` by ``steps`` steps of projected
    gradient ascent in ``u = T^-1 delta`` (see the module docstring).

    ``L``: the example-weighted mean of ``loss_fn`` (a batch mean) over ``batches``, evaluated
    with :func:`torch.func.functional_call` at ``w + delta``: the model is never changed.
    ``bn_mode``: ``"eval"`` (running statistics, the default), ``"train"`` (batch statistics,
    running ones untouched) or ``"recalibrated"`` (running statistics recomputed once at
    ``w`` and kept fixed); dropout is off. ``params``: the perturbed parameters (names or a
    predicate ``fn(name, parameter)``, as in :class:`~landscape.hessian.HessianOperator`;
    default all). Start: ``delta = 0``; the first step follows the gradient; where ``T g`` is
    exactly zero (a stationary point) a Gaussian direction drawn from ``seed`` is used.
    ``step_size``: the initial step ``a`` (default ``2 rho``, as APGD's first step); it halves,
    and the ascent restarts from the best point, after every step that does not increase
    the loss.
    """
    rho = _real("rho", rho, positive=True)
    eta = _real("eta", eta, positive=False)
    step = 2 * rho if step_size is None else _real("step_size", step_size, positive=True)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(adaptive, bool):
        raise ValueError(f"adaptive must be True or False, got {adaptive!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    # The operator validates loss_fn, batches, params and bn_mode, moves the batches to the
    # device and recalibrates BN once if asked; only its batches and tensors are used here.
    op = HessianOperator(model, loss_fn, batches, params=params, bn_mode=bn_mode, device=device)
    selected = set(op.names)
    fixed = {n: p.detach().to(op.device) for n, p in model.named_parameters()
             if n not in selected} | op.buffers
    w = op.parameters_vector()
    scale = w.abs() + eta if adaptive else torch.ones_like(w)
    movable = scale > 0
    if not movable.any():
        raise ValueError("adaptive=True with eta=0 and every perturbed weight zero: the only "
                         "feasible delta is 0; use eta > 0 or adaptive=False")

    def batch_loss(theta: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, dict(zip(op.names, theta)) | fixed, (x,)), y)

    def loss_and_grad(u: Tensor) -> tuple[float, Tensor]:
        theta = op.unflatten(w + scale * u)
        value, total = 0.0, torch.zeros_like(w)
        with model_mode(model, bn_mode):
            for x, y in op.batches:
                g, v = grad_and_value(batch_loss)(theta, x, y)
                weight = len(x) / op.num_examples
                total.add_(op.flatten(g), alpha=weight)
                value += float(v) * weight
        return value, total

    gen = torch.Generator().manual_seed(seed)
    best_u = torch.zeros_like(w)
    loss0, best_g = loss_and_grad(best_u)
    best = loss0
    for _ in range(steps):
        direction = scale * best_g
        norm = float(direction.norm())
        if not norm > 0:
            direction = torch.randn(w.numel(), generator=gen, dtype=torch.float64)
            direction = direction.to(w) * movable
            norm = float(direction.norm())
        u = best_u + (step / norm) * direction
        length = float(u.norm())
        if length > rho:
            u = u * (rho / length)
        value, g = loss_and_grad(u)
        if value > best:
            best, best_u, best_g = value, u, g
        else:
            step /= 2
    return Sharpness(
        sharpness=best - loss0, loss=loss0, perturbed_loss=best, rho=rho, adaptive=adaptive,
        eta=eta, steps=steps, step_size=2 * rho if step_size is None else float(step_size),
        delta_norm=float(best_u.norm()), num_params=op.dim, num_grad_evals=steps + 1,
    )


def sharpness_ratio(top_eigenvalue: float, trace: float) -> float:
    """``lambda_max / tr(H)``: the share of the total curvature in the sharpest direction
    (dimensionless; in ``[1/n, 1]`` for a positive semi-definite ``H`` of size n)."""
    ok = isinstance(trace, numbers.Real) and not isinstance(trace, bool)
    if not ok or not math.isfinite(trace) or trace <= 0:
        raise ValueError(f"trace must be a finite number > 0, got {trace!r}")
    ok = isinstance(top_eigenvalue, numbers.Real) and not isinstance(top_eigenvalue, bool)
    if not ok or not math.isfinite(top_eigenvalue):
        raise ValueError(f"top_eigenvalue must be a finite number, got {top_eigenvalue!r}")
    return float(top_eigenvalue) / float(trace)
