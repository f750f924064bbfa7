"""Directions in weight space for loss slices (Li et al. 2018, "Visualizing the loss landscape of
neural nets").

A direction is a dict ``{parameter name: tensor of the parameter's shape}`` over the
parameters it moves. By default these are the weights of dimension >= 2 (conv and linear
kernels): moving biases and BatchNorm parameters along a random direction is what produces
the NaN losses reported against tomgoldstein/loss-landscape (#25), so they stay at zero
unless ``include_bn_bias``.

Normalisation (``d`` the random direction, ``w`` the weights):

* ``"filter"``: each output filter ``d[i]`` (slice along dim 0) is rescaled to the norm of
  the same filter of the weights, ``d[i] * ||w[i]|| / ||d[i]||``; a 1-D parameter counts as one
  filter;
* ``"layer"``: each tensor ``d * ||w|| / ||d||``;
* ``"model"``: the direction as a whole, ``d * ||w_S|| / ||d||`` over the parameters ``S`` it
  moves (its direction unchanged: how a Hessian eigenvector is scaled);
* ``"none"``: as drawn.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

Direction = dict[str, Tensor]
NORMALISATIONS = ("filter", "layer", "model", "none")


def direction_parameters(model: nn.Module, *, include_bn_bias: bool = False) -> list[str]:
    """Names of the parameters a direction moves: every parameter of dimension >= 2 (and, with
    ``include_bn_bias``, the 1-D ones: biases and BatchNorm scales and shifts), model order."""
    names = [n for n, p in model.named_parameters() if include_bn_bias or p.dim() >= 2]
    if not names:
        raise ValueError(f"{type(model).__name__} has no parameter of dimension >= 2; pass "
                         "include_bn_bias=True to move its 1-D parameters")
    return names


def normalise(direction: Mapping[str, Tensor], model: nn.Module,
              normalisation: str = "filter") -> Direction:
    """``direction`` rescaled to the weights of ``model`` (see the module docstring)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    check_direction(model, direction)
    params = dict(model.named_parameters())
    if normalisation == "model":
        norm = lambda ts: torch.sqrt(sum(t.detach().double().square().sum() for t in ts))  # noqa: E731
        scale = norm(params[n] for n in direction) / norm(direction.values()).clamp_min(
            torch.finfo(torch.float64).tiny)
        return {n: d * scale.to(d) for n, d in direction.items()}
    out: Direction = {}
    for name, d in direction.items():
        w = params[name].detach()
        if normalisation == "none":
            out[name] = d.clone()
        elif normalisation == "layer" or d.dim() <= 1:
            out[name] = d * (w.norm() / d.norm().clamp_min(torch.finfo(d.dtype).tiny))
        else:
            dn = d.flatten(1).norm(dim=1).clamp_min(torch.finfo(d.dtype).tiny)
            wn = w.flatten(1).norm(dim=1)
            out[name] = d * (wn / dn).view(-1, *([1] * (d.dim() - 1)))
    return out


def random_direction(model: nn.Module, *, seed: int, normalisation: str = "filter",
                     include_bn_bias: bool = False) -> Direction:
    """A Gaussian direction from ``seed`` (drawn on the CPU in float64, so it does not depend
    on the device), normalised to the model's weights; see the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    raw = {}
    for name in direction_parameters(model, include_bn_bias=include_bn_bias):
        p = params[name]
        raw[name] = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
    return normalise(raw, model, normalisation)


def direction_from_vector(model: nn.Module, names: Sequence[str], vector: Tensor) -> Direction:
    """A flat vector over the parameters ``names`` (in that order, e.g. a Hessian eigenvector
    of ``HessianOperator(model, ..., params=names)``) as a direction."""
    params = dict(model.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"names: {unknown} are not parameters of {type(model).__name__}")
    sizes = [params[n].numel() for n in names]
    if vector.dim() != 1 or vector.numel() != sum(sizes):
        raise ValueError(f"vector must be flat with {sum(sizes)} entries (the parameters "
                         f"{list(names)[:3]}...), got shape {tuple(vector.shape)}")
    parts = torch.split(vector, sizes)
    return {n: t.reshape(params[n].shape).to(params[n]) for n, t in zip(names, parts)}


def check_direction(model: nn.Module, direction: Mapping[str, Tensor]) -> None:
    """Every entry names a parameter of ``model`` and has its shape (ValueError otherwise)."""
    params = dict(model.named_parameters())
    if not direction:
        raise ValueError("a direction must move at least one parameter")
    for name, d in direction.items():
        if name not in params:
            raise ValueError(f"direction moves {name!r}, which is not a parameter of "
                             f"{type(model).__name__}")
        if tuple(d.shape) != tuple(params[name].shape):
            raise ValueError(f"direction[{name!r}] has shape {tuple(d.shape)}, the parameter "
                             f"{tuple(params[name].shape)}")
        if not torch.isfinite(d).all():
            raise ValueError(f"direction[{name!r}] has non-finite entries")
