"""Pruning criteria from the curvature of the training loss.

* ``obd``, Optimal Brain Damage (LeCun, Denker & Solla 1990): the rise of the loss when weight
  i alone is set to zero, to second order at a minimum, ``F_ii w_i^2 / 2``. OBD keeps the
  positive part of the Hessian (its Levenberg-Marquardt / Gauss-Newton approximation): for a
  softmax cross-entropy that is the Fisher information ``F = E_x J^T (diag p - p p^T) J`` of the
  model's predictive distribution p. Its diagonal is computed exactly, per example
  ``sum_c p_c (d CE(f(x), c) / dw)^2`` over every class c (``labels=0``), or unbiasedly from
  ``labels`` classes drawn from p per example (many classes: the Monte Carlo Fisher; never the
  "empirical" Fisher of the true labels, Kunstner et al. 2019), over every example of the
  batches given, BatchNorm in eval mode; per-example gradients by ``torch.func.vmap``,
  ``chunk`` examples at a time (their gradients are held at once: ``chunk`` x the number of
  prunable weights); the exact sum costs C passes of per-example gradients (C classes).
  A Hutchinson estimate of the Hessian diagonal itself was tried first and dropped: with 64
  or 512 probe vectors its noise (of either sign) made a trained ResNet18 (width 1/8,
  digits) pruned by it at rate 0.5 score 9.7 % like random pruning, against 98.9 % for
  magnitude.
* ``grasp``, Gradient Signal Preservation (Wang, Zhang & Grosse 2020): GraSP removes the
  weights with the largest ``-w * (H g)`` (their removal reduces the gradient norm the least),
  with the logits divided by a ``temperature`` (200 in the paper) and, as its reference code,
  BatchNorm on batch statistics (``bn_mode="train"``; ``"eval"``: running statistics); the
  importance here is ``w * (H g)``, so the lowest go. ``g`` and ``H`` are the gradient and
  Hessian of the mean loss over the batches given, over the prunable weights
  (:class:`landscape.hessian.HessianOperator`): one gradient and one Hessian-vector product.
  GraSP is a pruning-at-initialisation method (``prune.checkpoint=init``). Its reference code
  also re-initialises the Linear layers (Xavier normal) of the copy it scores: option
  ``reinit_linear`` (off by default; ``seed`` seeds the draw).

Neither changes the model: its flags, ``requires_grad`` and ``.grad`` are left as found.
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from landscape.hessian.operator import HessianOperator
from landscape.modes import eval_mode
from landscape.pruning.criteria import Batches, check_count, register_criterion

LossFn = Callable[[Tensor, Tensor], Tensor]
GRASP_BN_MODES = ("train", "eval")


def _obd_options(options: Mapping[str, object]) -> None:
    for key, least in (("labels", 0), ("chunk", 1)):
        if key in options:
            check_count("obd", key, options[key], least)


def _grasp_options(options: Mapping[str, object]) -> None:
    t = options.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ValueError(f"option 'temperature' of pruning criterion 'grasp' must be > 0, got "
                         f"{t!r}")
    if options.get("bn_mode", "train") not in GRASP_BN_MODES:
        raise ValueError(f"option 'bn_mode' of pruning criterion 'grasp' must be one of "
                         f"{GRASP_BN_MODES}, got {options['bn_mode']!r}")
    if not isinstance(options.get("reinit_linear", False), bool):
        raise ValueError(f"option 'reinit_linear' of pruning criterion 'grasp' must be true or "
                         f"false, got {options['reinit_linear']!r}")
    if "seed" in options:
        check_count("grasp", "seed", options["seed"], 0)


@register_criterion("obd", check=_obd_options)
def obd(params: Mapping[str, Tensor], *, model: nn.Module, data: Batches | None,
        labels: int = 0, seed: int = 0, chunk: int = 16) -> dict[str, Tensor]:
    """``F_ii w_i^2 / 2`` with the Fisher diagonal over every class (``labels=0``) or over
    ``labels`` classes per example drawn from the model's prediction with a private generator
    seeded with ``seed`` (module docstring)."""
    _obd_options({"labels": labels, "chunk": chunk})
    if data is None:
        raise ValueError("criterion 'obd' needs data: an iterable of (inputs, targets) batches "
                         "(the Fisher information at their inputs)")
    names = list(params)
    chosen = {n: params[n].detach() for n in names}
    fixed = {**{n: p.detach() for n, p in model.named_parameters() if n not in chosen},
             **dict(model.named_buffers())}

    def example_loss(weights: dict[str, Tensor], x: Tensor, c: Tensor) -> Tensor:
        logits = functional_call(model, {**fixed, **weights}, (x[None],))
        return F.cross_entropy(logits, c[None])

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    gen = torch.Generator().manual_seed(int(seed))
    total = {n: torch.zeros_like(t) for n, t in chosen.items()}
    seen = 0
    with eval_mode(model):
        for x, _ in data:
            x = x.to(next(iter(chosen.values())).device)
            with torch.no_grad():
                p = F.softmax(model(x).double(), dim=1)
            if labels:
                drawn = torch.multinomial(p.cpu(), labels, replacement=True, generator=gen)
                classes = [(drawn[:, k].to(x.device), torch.full_like(p[:, 0], 1 / labels))
                           for k in range(labels)]
            else:
                classes = [(torch.full((len(x),), c, device=x.device), p[:, c])
                           for c in range(p.shape[1])]
            for c, weight in classes:
                for at in range(0, len(x), chunk):  # chunk x parameters floats at a time
                    part = slice(at, at + chunk)
                    g = per_example(chosen, x[part], c[part])
                    for n in names:
                        w = weight[part].to(g[n].dtype).view(-1, *[1] * (g[n].dim() - 1))
                        total[n] += (w * g[n].square()).sum(0)
            seen += len(x)
    if seen == 0:
        raise ValueError("criterion 'obd' got no batches of data")
    return {n: total[n] / seen * chosen[n].square() / 2 for n in names}


@register_criterion("grasp", check=_grasp_options)
def grasp(params: Mapping[str, Tensor], *, model: nn.Module, data: Batches | None,
          temperature: float = 200.0, bn_mode: str = "train", reinit_linear: bool = False,
          seed: int = 0, loss_fn: LossFn = F.cross_entropy) -> dict[str, Tensor]:
    """``w * (H g)`` of the loss of ``logits / temperature`` (module docstring); with
    ``reinit_linear``, of a copy whose Linear weights are drawn again (Xavier normal, from a
    generator seeded with ``seed``), as the reference code scores."""
    _grasp_options({"temperature": temperature, "bn_mode": bn_mode,
                    "reinit_linear": reinit_linear, "seed": seed})

    def cooled(logits: Tensor, targets: Tensor) -> Tensor:
        return loss_fn(logits / temperature, targets)

    batches = list(data) if data is not None else []
    if not batches:
        raise ValueError("criterion 'grasp' needs data: an iterable of (inputs, targets) "
                         "batches (the gradient and Hessian of their mean loss)")
    scored = _linear_reinitialised(model, seed) if reinit_linear else model
    op = HessianOperator(scored, cooled, batches, params=list(params), bn_mode=bn_mode,
                         device=next(iter(params.values())).device)
    scores = dict(zip(op.names, op.unflatten(op.parameters_vector() * op(op.gradient()))))
    return {n: scores[n].detach() for n in params}


def _linear_reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` weight drawn from Xavier normal (in module
    order, from a CPU generator seeded with ``seed``): GraSP's reference re-initialisation."""
    copy_ = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in copy_.modules():
            if isinstance(m, nn.Linear):
                draw = torch.empty(m.weight.shape, dtype=m.weight.dtype)
                m.weight.copy_(nn.init.xavier_normal_(draw, generator=gen))
    return copy_
