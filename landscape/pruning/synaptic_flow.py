"""SynFlow (Tanaka, Kunin, Yamins & Ganguli 2020): data-free pruning by iterative
conservation of synaptic flow.

On a copy of the network in float64 with every floating parameter and buffer replaced by its
absolute value (the reference code's ``linearize``: BatchNorm in eval mode, its running
statistics made positive too), the objective is ``R = 1^T f(1)``, the summed output for an
all-ones input of the data's shape (one image; the data is read for that shape only). A
weight's score is its synaptic flow ``|w * dR/dw|``. For a network of positively homogeneous
ops (bias-free convs and Linears, ReLU, max- and average-pooling) the scores of every layer
sum to R (the paper's Theorem 1, tested).

Pruning is iterative (Algorithm 1): at step k of ``iterations`` the weights pruned so far are
zero, the scores are recomputed and the lowest go until the fraction pruned is
``1 - (1 - rate)^(k / iterations)`` (exponential schedule; at the last step exactly ``rate``),
over the same scope as the final selection. This is what keeps SynFlow from cutting a layer
off before the others (layer collapse); ``iterations=1`` is the one-shot score. The scores
returned are those of the last step, with the weights pruned before it set to -1 (below every
score, which is >= 0), so selecting ``rate`` of them gives the last step's mask exactly.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from typing import Mapping

import torch
from torch import Tensor, nn

from landscape.pruning.criteria import Batches, check_count, register_criterion
from landscape.pruning.selection import EmptyLayerWarning, select_masks


def flow_network(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` in eval mode with every floating tensor made positive."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in itertools.chain(net.parameters(), net.buffers()):
            if t.is_floating_point():
                t.abs_()
    return net


def synaptic_flow(net: nn.Module, names: list[str], shape: tuple[int, ...]) -> dict[str, Tensor]:
    """``|w * dR/dw|`` of the parameters ``names`` of ``net`` (a :func:`flow_network`), with
    ``R`` the summed output for a ones input of ``shape`` (one example, no batch dim)."""
    live = dict(net.named_parameters())
    chosen = [live[n].requires_grad_(True) for n in names]  # the private copy's
    ones = torch.ones((1, *shape), dtype=torch.float64, device=chosen[0].device)
    with torch.enable_grad():
        grads = torch.autograd.grad(net(ones).sum(), chosen, allow_unused=True)
    out = {}
    for n, p, g in zip(names, chosen, grads):
        s = torch.zeros_like(p) if g is None else (g * p).detach().abs()
        if not torch.isfinite(s).all():
            raise ValueError(f"criterion 'synflow': the synaptic flow of '{n}' is not finite "
                             "in float64 (the product of the absolute weights overflows for "
                             "this network)")
        out[n] = s
    return out


def _synflow_options(options: Mapping[str, object]) -> None:
    if "iterations" in options:
        check_count("synflow", "iterations", options["iterations"], 1)


@register_criterion("synflow", check=_synflow_options, data_free=True)
def synflow(params: Mapping[str, Tensor], *, model: nn.Module, data: Batches | None,
            rate: float, scope: str = "global", iterations: int = 100) -> dict[str, Tensor]:
    """SynFlow scores after ``iterations`` steps of pruning towards ``rate`` (module
    docstring); ``rate`` and ``scope`` are those of the pruning call."""
    _synflow_options({"iterations": iterations})
    if data is None:
        raise ValueError("criterion 'synflow' needs one batch of data for the input's shape "
                         "(its values are not read)")
    x, _ = next(iter(data))
    net = flow_network(model)
    names = list(params)
    live = dict(net.named_parameters())
    absolute = {n: live[n].detach().clone() for n in names}
    keep = {n: torch.ones_like(p, dtype=torch.bool) for n, p in absolute.items()}
    scores: dict[str, Tensor] = {}
    for k in range(1, iterations + 1):
        with torch.no_grad():
            for n in names:
                live[n].copy_(absolute[n] * keep[n])
        flow = synaptic_flow(net, names, tuple(x.shape[1:]))
        scores = {n: torch.where(keep[n], s, torch.full_like(s, -1.0)) for n, s in flow.items()}
        if k < iterations:  # the caller selects the last step's mask (and warns about it)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EmptyLayerWarning)
                keep = select_masks(scores, 1.0 - (1.0 - rate) ** (k / iterations), scope)
    return {n: scores[n].to(params[n].device) for n in names}
