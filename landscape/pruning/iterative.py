"""Iterative magnitude pruning (IMP) with rewinding (Frankle et al.; open_lth's levels and
branches), as pure functions on masks; the ``imp`` stage (``landscape.stages.imp``) trains.

Round r keeps ``(1 - p)^r`` of the prunable weights: it prunes the smallest-magnitude weights of
the network trained in round r - 1 (its pruned weights first, so they stay pruned) until the
cumulative rate ``1 - (1 - p)^r`` is reached, over the same scope as one-shot pruning. Round 1
prunes the dense network, so its mask is the one-shot magnitude mask at rate p of the same
checkpoint. Controls (open_lth's branches), per round: ``random_mask``, a random mask with the
same number of kept weights in every layer; ``random_reinit``, the round's mask on a fresh
initialisation.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from landscape.pruning.selection import check_rate, select_masks

CONTROLS = ("random_mask", "random_reinit")


def cumulative_rate(rate_per_round: float, rounds: int) -> float:
    """The fraction pruned after ``rounds`` rounds of ``rate_per_round`` each."""
    check_rate(rate_per_round)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    return 1.0 - (1.0 - rate_per_round) ** rounds


def next_masks(weights: Mapping[str, Tensor], previous: Mapping[str, Tensor] | None,
               rate_per_round: float, round_: int, scope: str = "global") -> dict[str, Tensor]:
    """The keep-masks of round ``round_`` (>= 1) from the weights of the network trained in
    round ``round_ - 1`` (the dense network for round 1, ``previous`` None): the weights
    ``previous`` pruned rank below every live one, then the lowest magnitudes go, exactly
    ``round(cumulative_rate(...) * N)`` in all (``select_masks``)."""
    if round_ < 1:
        raise ValueError(f"round must be >= 1, got {round_}")
    if previous is not None and set(previous) != set(weights):
        raise ValueError("previous masks and weights name other parameters: "
                         f"{sorted(set(previous) ^ set(weights))}")
    scores = {}
    for name, w in weights.items():
        s = w.detach().abs().float()
        if previous is not None:
            s = torch.where(previous[name].to(s.device), s, torch.full_like(s, -1.0))
        scores[name] = s
    return select_masks(scores, cumulative_rate(rate_per_round, round_), scope)


def random_masks_like(masks: Mapping[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Masks with the same number of kept weights in every tensor as ``masks``, at uniformly
    random positions (one generator seeded by ``seed``, tensors in ``masks`` order)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in masks.items():
        keep = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=g)[:keep]] = True
        out[name] = flat.view(m.shape).to(m.device)
    return out
