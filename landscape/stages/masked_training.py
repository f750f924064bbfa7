"""Training a pruned network with the run's own training settings, its mask kept exactly:
what an IMP round does after rewinding, and what the fine-tune unit does with
``prune.finetune_recipe=train`` (the protocol of pruning at initialisation: SNIP, GraSP,
SynFlow; and Liu et al.'s retraining of a pruned network with the original schedule)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from landscape.journal import state_digest
from landscape.stages.base import RunContext
from landscape.stages.scratch import LAST, finish, go_on
from landscape.storage import save_checkpoint
from landscape.tracking import TrackConfig
from landscape.train import (
    CHECKPOINT_FORMAT, TrainConfig, TrainOutcome, make_optimizer, make_scheduler,
    recorded_data_path, train_model,
)

log = logging.getLogger(__name__)


def train_masked(ctx: RunContext, model: nn.Module, masks: dict[str, Tensor], work: Path, *,
                 start_epoch: int = 0, state: Optional[dict[str, Any]] = None,
                 what: str = "training", keep: bool = False) -> TrainOutcome:
    """Train ``model`` (its weights multiplied by ``masks``; every gradient masked) from epoch
    ``start_epoch`` to ``train.epochs`` with the run's training settings: its optimizer,
    learning-rate schedule (taken up at ``start_epoch``: from ``state``'s optimizer and
    scheduler when given, the masked weights' momentum zeroed; else the schedule stepped
    ``start_epoch`` times with fresh momentum), data path, augmentation and data order (the
    run's seed). A diverged run raises ``RuntimeError`` naming ``what``.

    ``work`` is a scratch folder for the trainer's checkpoints, removed when the training ends
    (``keep``: left for the caller to remove with :func:`~landscape.stages.scratch.finish` once
    it has measured the trained network; called again meanwhile, it trains nothing more).
    A training stopped on the way (preempted, killed, an exception) keeps it, and the next call
    goes on from its last epoch when it starts from the same network (:func:`start_digest`:
    the masked weights, the masks, ``start_epoch``, whether ``state`` was given): the resumed
    training equals an uninterrupted one (tests/test_masked_training.py). Another start
    empties the folder and trains from ``start_epoch``."""
    tc: TrainConfig = ctx.train
    if start_epoch >= tc.epochs:
        raise ValueError(f"{what}: starting at epoch {start_epoch} leaves no epoch to train "
                         f"(train.epochs={tc.epochs})")
    model.to(ctx.settings.device)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m.to(params[n].device))
    hooks = [params[n].register_hook(lambda g, m=m.to(params[n].device): g * m)
             for n, m in masks.items()]
    opt = make_optimizer(model, tc)
    sched = make_scheduler(opt, tc)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        zero_masked_momentum(opt, model, masks)
    else:
        for _ in range(start_epoch):
            sched.step()
    path = ctx.data_path(recorded_data_path(ctx.checkpoint_dir))
    data = ctx.resident if path == "resident" else ctx.data
    start = {"digest": start_digest(model, masks, start_epoch, state is not None),
             "start_epoch": start_epoch, "what": what}
    if go_on(work, start):
        log.info("%s: %s goes on from its checkpoint in %s", ctx.identity.run_id, what, work)
    else:
        save_checkpoint(work / LAST, {
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": start_epoch, "history": [],
            "data_path": path, "format": CHECKPOINT_FORMAT, "run_id": ctx.identity.run_id})
    try:
        outcome = train_model(model, data.train, data.test, unit_settings(tc),
                              seed=ctx.identity.seed, settings=ctx.settings,
                              checkpoint_dir=work, num_workers=ctx.num_workers,
                              progress=ctx.progress, run_id=ctx.identity.run_id)
    finally:
        for h in hooks:
            h.remove()
    if not keep:
        finish(work)  # kept above when the training did not return
    if outcome.diverged or not outcome.history:
        raise RuntimeError(f"{what} diverged at epoch {outcome.diverged_epoch}")
    return outcome


def start_digest(model: nn.Module, masks: dict[str, Tensor], start_epoch: int,
                 resumed_state: bool) -> str:
    """sha256 of what a masked training starts from: every tensor of ``model``'s state (the
    masked weights, BN statistics) and of ``masks`` (names, dtypes, shapes, bytes), the start
    epoch and whether the optimizer state was taken up."""
    return state_digest(f"{start_epoch};{resumed_state}",
                        {"model": model.state_dict(), "masks": masks})


def unit_settings(tc: TrainConfig) -> TrainConfig:
    """The run's training settings for a unit's training: the same schedule, no trackers,
    and no saved epochs (the weights are the unit's, not the run's)."""
    return dataclasses.replace(tc, track=TrackConfig(), save_epochs=[],
                               save_optimizer_epochs=False)


def zero_masked_momentum(opt: torch.optim.Optimizer, model: nn.Module,
                         masks: dict[str, Tensor]) -> None:
    """Momentum buffers of pruned weights set to zero, so no step can move them."""
    by_param = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            n = by_param.get(id(p))
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if n in masks and buf is not None:
                buf.mul_(masks[n].to(buf.device))
