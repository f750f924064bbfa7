"""Iterative magnitude pruning with rewinding (Frankle et al. 2019/2020; open_lth's levels and
branches): ``imp.rounds`` rounds, each pruning ``imp.rate`` of the weights still alive by
magnitude (``landscape.pruning.iterative``), rewinding the survivors to ``imp.rewind`` (``init``
or a saved epoch ``epoch_<n>``, see ``train.save_epochs``) and training them again, with the
mask kept exactly, for the rest of the run's schedule.

Units: ``imp_r<r>`` (the IMP line; round r needs round r - 1) and, per ``imp.controls``,
``imp_r<r>_random_mask`` (a random mask with round r's per-layer counts, from the same rewind
weights) and ``imp_r<r>_random_reinit`` (round r's mask on a fresh initialisation). Each trains
``train.epochs - rewind epoch`` epochs with the run's training settings, the learning-rate
schedule taken up where the rewind epoch left it (with the optimizer state too when that epoch
was saved with ``train.save_optimizer_epochs``; else momentum starts at zero). The trained
weights and masks of the line go to ``checkpoints/imp/round_<r>.pt`` (the next round's input);
rows per unit, ``stage=imp``: ``test_acc`` (after the last epoch), ``best_test_acc``,
``sparsity``, ``nonzero_params``, with ``criterion`` = ``imp:magnitude`` / ``imp:random_mask`` /
``imp:random_reinit``, ``prune_rate`` = the cumulative rate and ``index`` = the round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape.pruning import (
    PRUNABLE_KINDS, SCOPES, check_rate, prunable_parameters, sparsity_report,
)
from landscape.pruning.iterative import CONTROLS, cumulative_rate, next_masks, random_masks_like
from landscape.seeds import IMP_CONTROL, stream_seed
from landscape.stages.base import RunContext, Stage, Unit, register_stage
from landscape.stages.masked_training import train_masked
from landscape.storage import CheckpointError, load_checkpoint, save_checkpoint
from landscape.train import CHECKPOINT_FORMAT

@dataclass
class ImpConfig:
    enabled: bool = False
    rounds: int = 3
    rate: float = 0.2  # fraction of the surviving prunable weights pruned in each round
    rewind: str = "init"  # init | epoch_<n> (a saved epoch: train.save_epochs)
    checkpoint: str = "final"  # the dense network round 1 prunes: final | best
    scope: str = "global"  # global | layerwise
    include: list[str] = field(default_factory=lambda: ["conv", "linear"])
    controls: list[str] = field(default_factory=list)  # random_mask, random_reinit


def rewind_epoch(rewind: str) -> int:
    """``init`` -> 0, ``epoch_<n>`` -> n; anything else is an error naming ``imp.rewind``."""
    if rewind == "init":
        return 0
    head, _, n = rewind.partition("_")
    if head != "epoch" or not n.isdigit() or int(n) < 1:
        raise ValueError(f"imp.rewind must be init or epoch_<n> (a saved epoch, n >= 1), got "
                         f"{rewind!r}")
    return int(n)


@register_stage
class ImpStage(Stage):
    name = "imp"
    config_field = "imp"
    trains = True

    def validate(self, config: ImpConfig) -> None:
        c = config
        if isinstance(c.rounds, bool) or not isinstance(c.rounds, int) or c.rounds < 1:
            raise ValueError(f"imp.rounds must be an integer >= 1, got {c.rounds!r}")
        try:
            check_rate(c.rate)
        except ValueError as e:
            raise ValueError(f"imp.rate: {e}") from None
        if not c.rate > 0:
            raise ValueError(f"imp.rate must be in (0, 1), got {c.rate}")
        rewind_epoch(c.rewind)
        if c.checkpoint not in ("final", "best"):
            raise ValueError(f"imp.checkpoint must be final or best, got {c.checkpoint!r}")
        if c.scope not in SCOPES:
            raise ValueError(f"imp.scope must be one of {list(SCOPES)}, got {c.scope!r}")
        if not c.include or any(k not in PRUNABLE_KINDS for k in c.include):
            raise ValueError(f"imp.include must be a non-empty subset of {list(PRUNABLE_KINDS)},"
                             f" got {c.include}")
        if any(k not in CONTROLS for k in c.controls):
            raise ValueError(f"imp.controls must be a subset of {list(CONTROLS)}, got "
                             f"{c.controls}")

    def units(self, config: ImpConfig) -> list[Unit]:
        out = []
        for r in range(1, config.rounds + 1):
            out.append(Unit(f"imp_r{r}", {"round": r, "branch": "magnitude"}))
            out += [Unit(f"imp_r{r}_{k}", {"round": r, "branch": k}) for k in config.controls
                    if k in CONTROLS]
        return out

    def run(self, ctx: RunContext, config: ImpConfig, unit: Unit) -> list[dict]:
        r, branch = unit.params["round"], unit.params["branch"]
        masks = round_masks(ctx, config, r)
        seed = stream_seed(ctx.identity.seed, IMP_CONTROL, r - 1)
        if branch == "random_mask":
            masks = random_masks_like(masks, seed)
        model, outcome = train_round(ctx, config, masks, r, branch, seed)
        if branch == "magnitude":
            save_checkpoint(imp_dir(ctx) / f"round_{r}.pt", {
                "model": model.state_dict(), "masks": masks, "round": r,
                "run_id": ctx.identity.run_id, "format": CHECKPOINT_FORMAT})
        report = sparsity_report(model, masks)
        last, best = outcome.history[-1], outcome.best
        note = (f"round={r}; rate_per_round={config.rate}; rewind={config.rewind}; "
                f"pruned_from={config.checkpoint}; scope={config.scope}; "
                f"include={','.join(config.include)}; branch={branch}; "
                f"epochs={len(outcome.history)}")
        common = {"stage": "imp", "criterion": f"imp:{branch}",
                  "prune_rate": cumulative_rate(config.rate, r), "finetuned": False,
                  "index": r, "note": note}
        return [{**common, "metric": m, "value": v} for m, v in (
            ("test_acc", last.test_acc), ("test_loss", last.test_loss),
            ("best_test_acc", best.test_acc), ("sparsity", report.sparsity),
            ("nonzero_params", float(report.model_nonzero)))]


def imp_dir(ctx: RunContext) -> Path:
    return ctx.checkpoint_dir / "imp"


def round_masks(ctx: RunContext, config: ImpConfig, r: int) -> dict[str, Tensor]:
    """Round ``r``'s magnitude masks: from the dense checkpoint (r = 1) or from the weights
    and masks the line's round r - 1 saved."""
    if r == 1:
        model, previous = ctx.load_model(config.checkpoint), None
    else:
        path = imp_dir(ctx) / f"round_{r - 1}.pt"
        state = load_checkpoint(path, run_id=ctx.identity.run_id)
        model = ctx.build_model()
        model.load_state_dict(state["model"])
        previous = state["masks"]
    params = prunable_parameters(model, include=config.include)
    return {k: v.cpu() for k, v in next_masks(
        {n: p.detach().cpu() for n, p in params.items()}, previous, config.rate, r,
        config.scope).items()}


def _rewind_state(ctx: RunContext, config: ImpConfig) -> dict[str, Any]:
    """The checkpoint the survivors are rewound to (``init.pt`` or ``epoch_<n>.pt``)."""
    name = "init" if config.rewind == "init" else config.rewind
    path = ctx.checkpoint_dir / f"{name}.pt"
    if not path.exists():
        raise CheckpointError(f"imp.rewind={config.rewind}: {path} does not exist; training "
                              f"keeps that epoch's weights when train.save_epochs lists it "
                              f"(e.g. train.save_epochs=[{rewind_epoch(config.rewind)}] "
                              f"train.save_optimizer_epochs=true), then the run is retrained")
    return load_checkpoint(path, run_id=ctx.identity.run_id)


def train_round(ctx: RunContext, config: ImpConfig, masks: dict[str, Tensor], r: int,
                branch: str, seed: int):
    """Train the rewound, masked network for the rest of the schedule; (model, outcome)."""
    k = rewind_epoch(config.rewind)
    if k >= ctx.train.epochs:
        raise ValueError(f"imp.rewind={config.rewind} leaves no epoch to train "
                         f"(train.epochs={ctx.train.epochs})")
    state = _rewind_state(ctx, config)
    if branch == "random_reinit":
        model = _fresh(ctx, seed)
    else:
        model = ctx.build_model()
        model.load_state_dict(state["model"])
    resume = "optimizer" in state and branch != "random_reinit"
    outcome = train_masked(ctx, model, masks, imp_dir(ctx) / f"r{r}_{branch}", start_epoch=k,
                           state=state if resume else None, what=f"imp round {r} ({branch})")
    return model, outcome


def _fresh(ctx: RunContext, seed: int) -> nn.Module:
    """A new initialisation of the run's architecture, from ``seed`` (not the run's own)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ctx.identity.build_model()
