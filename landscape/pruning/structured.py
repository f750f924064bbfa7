"""Structured (channel) pruning through torch-pruning, targeted by a fraction of parameters.

torch-pruning removes whole channels (with everything that depends on them: the next layer's
input slices, BatchNorm entries, residual partners) and takes a *channel* ratio. We want the
same meaning of ``rate`` as unstructured pruning: the fraction of the prunable parameters
(:func:`landscape.pruning.prunable_parameters`) removed. With global ranking, torch-pruning's
``BasePruner`` removes the ``n = C - int(C * (1 - ratio))`` lowest-ranked of the C prunable
channels, one channel more per step of 1/C. So we search the integer n (secant steps, then
bisection; each probe prunes a fresh deep copy) for adjacent n, n + 1 whose removed fractions
straddle ``rate`` and keep the closer one: the result is off by at most half the parameters of
one channel (of the group that channel belongs to).
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import torch
from torch import Tensor, nn

from landscape.pruning.masks import DEFAULT_INCLUDE, classifier_layer, prunable_parameters
from landscape.pruning.selection import check_rate

if TYPE_CHECKING:
    import torch_pruning as tp


def _tp():
    """torch_pruning, imported when first used: it imports timm (0.5 s of every command that
    prunes no channels, ``landscape-status`` included)."""
    return importlib.import_module("torch_pruning")


# Channel importances by name (torch-pruning's defaults: scores averaged over the group and
# divided by their mean per group before the global ranking).
IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude": lambda: _tp().importance.GroupMagnitudeImportance(p=2),
    "l1": lambda: _tp().importance.GroupMagnitudeImportance(p=1),
    "lamp": lambda: _tp().importance.LAMPImportance(p=2),
    "fpgm": lambda: _tp().importance.FPGMImportance(p=2),
    "random": lambda: _tp().importance.RandomImportance(),
}


@dataclass(frozen=True)
class StructuredResult:
    """A channel-pruned copy of a model.

    ``model``: the new, smaller architecture (the input model is untouched).
    ``rate``: requested fraction of prunable parameters to remove.
    ``achieved``: fraction actually removed, ``1 - params_after / params_before`` over the
    prunable set (same names before and after; shapes shrink).
    ``channels_pruned``: channels requested from torch-pruning, of its ``channels_total``;
    ``channel_ratio``: the ratio handed to torch-pruning for that.
    ``step``: prunable parameters between the two channel counts straddling the target
    (one channel's worth); ``|achieved - rate| * params_before <= step / 2``.
    """

    model: nn.Module
    rate: float
    achieved: float
    params_before: int
    params_after: int
    channels_pruned: int
    channels_total: int
    channel_ratio: float
    step: int


def structured_prune(
    model: nn.Module,
    rate: float,
    example_inputs: Tensor,
    *,
    importance: str | tp.importance.Importance = "magnitude",
    include: Iterable[str] = DEFAULT_INCLUDE,
    exclude_first_conv: bool = False,
    exclude_classifier: bool = False,
    seed: int = 0,
) -> StructuredResult:
    """Remove channels of a deep copy of ``model`` until ``rate`` of its prunable parameters go.

    ``importance`` is a name in :data:`IMPORTANCES` or a torch-pruning ``Importance``
    (gradient-based ones, e.g. ``GroupTaylorImportance``, read the ``.grad`` already on
    ``model``'s parameters; every probe copy carries them). The classifier's
    outputs are never pruned; ``exclude_first_conv`` keeps the first conv's output channels.
    ``exclude_classifier``/``include`` only change which parameters are counted.
    ``seed`` seeds torch's RNG (forked) for each probe, so ``"random"`` is reproducible.
    """
    rate = check_rate(rate)
    if isinstance(importance, str):
        if importance not in IMPORTANCES:
            raise ValueError(
                f"importance must be one of {', '.join(IMPORTANCES)} or a torch_pruning "
                f"Importance; got {importance!r}"
            )
        importance_fn = IMPORTANCES[importance]()
    else:
        importance_fn = importance
    options = dict(include=tuple(include), exclude_first_conv=exclude_first_conv,
                   exclude_classifier=exclude_classifier)
    before = _count(model, options)
    target = rate * before
    probes: dict[int, tuple[nn.Module, int]] = {}

    def removed(n: int) -> int:
        """Prunable parameters removed by pruning n channels of a fresh copy (cached)."""
        if n not in probes:
            candidate = _copy_with_grads(model)
            if n > 0:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    _pruner(candidate, example_inputs, importance_fn, _ratio_for(n, total),
                            exclude_first_conv).step()
            probes[n] = candidate, _count(candidate, options)
        return before - probes[n][1]

    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs)  # validate the input size once, not in every copy
        total = _pruner(_copy_with_grads(model), example_inputs, importance_fn, 0.0,
                        exclude_first_conv).initial_total_channels
        # A uniform channel ratio c keeps about (1 - c)^2 of each conv's weights.
        guess = round(total * (1 - (1 - rate) ** 0.5))
        lo, hi = _bracket(removed, target, total, guess)
    finally:
        model.train(was_training)

    if not removed(lo) <= target < removed(hi):
        raise ValueError(
            f"channel pruning cannot remove a fraction {rate} of the prunable parameters of "
            f"{type(model).__name__}: torch-pruning keeps at least one channel per group "
            f"(removed {removed(hi) / before:.4f} at {hi} of {total} channels)"
        )
    best = lo if target - removed(lo) <= removed(hi) - target else hi
    pruned_model, after = probes[best]
    pruned_model.train(was_training)
    return StructuredResult(
        model=pruned_model, rate=rate, achieved=1 - after / before, params_before=before,
        params_after=after, channels_pruned=best, channels_total=total,
        channel_ratio=_ratio_for(best, total), step=removed(hi) - removed(lo),
    )


def _bracket(
    removed: Callable[[int], int], target: float, total: int, guess: int,
    secant_steps: int = 6,
) -> tuple[int, int]:
    """Adjacent (lo, hi = lo + 1) with removed(lo) <= target < removed(hi), for removed(n)
    increasing on [0, total]. Secant steps through the last two probes (starting from
    removed(0) = 0), kept inside the bracket, for at most ``secant_steps`` probes, then
    bisection: usually 3-5 probes, at most ``secant_steps + log2(total)``.
    """
    lo, hi = 0, total
    last = (0, 0)
    mid, probes = guess, 0
    while hi - lo > 1:
        mid = min(max(mid, lo + 1), hi - 1)
        r = removed(mid)
        probes += 1
        if r <= target:
            lo = mid
        else:
            hi = mid
        (n1, r1), last = last, (mid, r)
        if probes < secant_steps and r != r1:
            mid = round(mid + (target - r) * (mid - n1) / (r - r1))
        else:
            mid = (lo + hi) // 2
    return lo, hi


def _copy_with_grads(model: nn.Module) -> nn.Module:
    """A deep copy that also carries ``.grad`` (deepcopy drops it), for gradient importances."""
    clone = copy.deepcopy(model)
    for p, q in zip(model.parameters(), clone.parameters()):
        if p.grad is not None:
            q.grad = p.grad.detach().clone()
    return clone


def _ratio_for(n: int, total: int) -> float:
    # BasePruner prunes C - int(C * (1 - ratio)); (n - 1/2) / C gives exactly n despite rounding.
    return 0.0 if n == 0 else (n - 0.5) / total


def _pruner(
    model: nn.Module, example_inputs: Tensor, importance: tp.importance.Importance,
    ratio: float, exclude_first_conv: bool,
) -> tp.pruner.BasePruner:
    head = classifier_layer(model)
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    ignored = ([model.get_submodule(head)] if head is not None else []) + (
        convs[:1] if exclude_first_conv else [])
    return _tp().pruner.BasePruner(
        model, example_inputs, importance=importance, global_pruning=True,
        pruning_ratio=ratio, ignored_layers=ignored,
    )


def _count(model: nn.Module, options: dict) -> int:
    return sum(p.numel() for p in prunable_parameters(model, **options).values())
