"""Fine-tuning stage: each pruned model of the prune stage trained further with its mask kept
exactly (the masks saved by the prune unit are reused); settings in ``prune.finetune_*``.
Rows: ``train_loss`` / ``train_acc`` / ``test_acc`` / ``test_loss`` per epoch (``index`` =
epoch), ``test_acc`` / ``test_loss`` after the last epoch (no index), ``best_test_acc`` (the
best epoch's, ``index`` = that epoch), and the sparsity of the result.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscape.pruning import finetune, sparsity_report
from landscape.seeds import FINETUNE, FINETUNE_EPOCH, stream_seed
from landscape.stages.base import RunContext, Stage, Unit, register_stage
from landscape.stages.prune import (
    FINETUNE_FIELDS, PruneConfig, evaluate_on_test, finetune_note, label, prune_checkpoint,
    prune_note, settings_hash, unit_suffix, validate,
)
from landscape.stages.batches import eval_split
from landscape.stages.masked_training import start_digest, train_masked
from landscape.stages.scratch import LAST, finish, go_on
from landscape.stages.pruned_geometry import geometry_settings, pruned_geometry_rows
from landscape.storage import CheckpointError, load_checkpoint, save_checkpoint
from landscape.train import evaluate, make_loader

log = logging.getLogger(__name__)


# prune.finetune_recipe: ``finetune`` trains with prune.finetune_* (constant learning rate,
# the paper's); ``train`` with the run's own training settings (train.epochs, optimizer,
# schedule, augmentation: :func:`landscape.stages.masked_training.train_masked`), the protocol
# after pruning at initialisation.
RECIPES = ("finetune", "train")


def hashed_settings(config: PruneConfig) -> dict[str, object]:
    """What names a fine-tune unit: the prune.finetune_* settings (as before the recipe
    existed, so those units keep their names), or the recipe alone when it is the run's own
    (``finetune_*`` are then unused: two values of them are one training)."""
    if config.finetune_recipe == "finetune":
        return {k: getattr(config, k) for k in FINETUNE_FIELDS}
    return {"finetune_recipe": config.finetune_recipe}


@register_stage
class FinetuneStage(Stage):
    """Fine-tuning of each pruned model with its mask kept exactly (reuses the saved masks)."""

    name = "finetune"
    perturbs_parameters = True
    config_field = "prune"
    trains = True

    def enabled(self, config: PruneConfig) -> bool:
        return config.enabled and config.finetune

    def validate(self, config: PruneConfig) -> None:
        validate(config)
        if config.finetune_recipe not in RECIPES:
            raise ValueError(f"prune.finetune_recipe must be one of {RECIPES}, got "
                             f"{config.finetune_recipe!r}")

    def units(self, config: PruneConfig) -> list[Unit]:
        ft = settings_hash(hashed_settings(config))
        return [Unit(f"finetune_{unit_suffix(config, r)}_{ft}",
                     {"rate": float(r), "prune_unit": f"prune_{unit_suffix(config, r)}",
                      "checkpoint": config.checkpoint})
                for r in config.rates]

    def settings(self, config: PruneConfig) -> dict:
        # The unit name's hashes cover the pruning and the fine-tuning settings; the geometry
        # measured on the fine-tuned network is recorded here (a change fine-tunes again).
        return geometry_settings(config)

    def run(self, ctx: RunContext, config: PruneConfig, unit: Unit) -> list[dict]:
        rate = unit.params["rate"]
        dense = None  # path_points needs masks: validation refuses it with structured pruning
        if config.structured:
            model, _, _ = prune_checkpoint(ctx, config, rate, ctx.load_model(config.checkpoint))
            masks: dict = {}
        else:
            model = ctx.load_model(config.checkpoint)
            dense = copy.deepcopy(model) if config.path_points else None
            saved = ctx.read_arrays(unit.params["prune_unit"])
            masks = {k: torch.from_numpy(np.asarray(v, dtype=bool)) for k, v in saved.items()}
            with torch.no_grad():
                state = model.state_dict()
                for k, m in masks.items():
                    state[k].mul_(m.to(state[k].device))
        ctx.settings.place(model)  # channels_last on CUDA, as in training
        # The fine-tuned weights stay in the scratch folder until the unit's measurements are
        # done: a unit stopped in them (a long Hessian) does not fine-tune again.
        work = ctx.checkpoint_dir / ("retrain" if config.finetune_recipe == "train"
                                     else "finetune") / unit.name
        if config.finetune_recipe == "train":  # the run's own optimizer, schedule and data
            outcome = train_masked(ctx, model, masks, work, what=unit.name, keep=True)
            epochs = [vars(e) for e in outcome.history]
        else:
            epochs = _finetune_epochs(ctx, config, model, masks, work)
        rows: list[dict] = [{"metric": m, "value": e[m], "index": i + 1}
                            for m in ("train_loss", "train_acc") for i, e in enumerate(epochs)]
        rows += [{"metric": m, "value": e[m], "index": i + 1}
                 for i, e in enumerate(epochs) for m in ("test_acc", "test_loss")]
        best = max(range(len(epochs)), key=lambda i: (epochs[i]["test_acc"], -i))
        rows.append({"metric": "best_test_acc", "value": epochs[best]["test_acc"],
                     "index": best + 1})
        if masks:
            report = sparsity_report(model, masks)
            rows += [{"metric": "sparsity", "value": report.sparsity},
                     {"metric": "nonzero_params", "value": report.model_nonzero},
                     {"metric": "compression_ratio", "value": report.compression_ratio}]
        if config.recalibrate_bn:
            rows += evaluate_on_test(ctx, config, model)
        else:  # after the last epoch, as evaluated there
            rows += [{"metric": m, "value": epochs[-1][m]} for m in ("test_acc", "test_loss")]
        note = (finetune_note(config) if config.finetune_recipe == "finetune" else
                f"{prune_note(config)}; finetune_recipe=train; epochs={len(epochs)}")
        rows += pruned_geometry_rows(ctx, config, model, masks or None, dense, note,
                                     stage=self, unit=unit.name, folder=work / "measured")
        finish(work)
        common = {"criterion": label(config), "prune_rate": rate, "finetuned": True,
                  "protocol": config.protocol, "note": note}
        return [{**common, **r} for r in rows]


def _finetune_epochs(ctx: RunContext, config: PruneConfig, model: nn.Module,
                     masks: dict, work: Path) -> list[dict[str, float]]:
    """Fine-tune with prune.finetune_* (``landscape.pruning.finetune``); per epoch its
    train_loss, train_acc, test_loss and test_acc. Each epoch's state is saved in the scratch
    folder ``work`` (the caller removes it): a fine-tuning stopped on the way (preempted, killed)
    goes on from its last epoch when it starts from the same network (as a masked training,
    :func:`landscape.stages.scratch.go_on`) and gives the uninterrupted one's rows."""
    gen = torch.Generator()

    def epoch_batches(epoch: int):
        gen.manual_seed(stream_seed(ctx.identity.seed, FINETUNE_EPOCH, epoch))
        loader = make_loader(ctx.data.train, ctx.train.batch_size, ctx.settings,
                             shuffle=True, generator=gen)
        return ((ctx.settings.to_device(x), y.to(ctx.settings.device)) for x, y in loader)

    test = make_loader(eval_split(ctx, "test"), ctx.train.eval_batch_size, ctx.settings,
                       shuffle=False)

    def test_after_epoch(m: nn.Module) -> dict[str, float]:
        loss, acc = evaluate(m, test, ctx.settings)
        return {"test_loss": loss, "test_acc": acc}

    resume = None
    if go_on(work, {"digest": start_digest(model, masks, 0, False), "what": "finetune"}):
        try:
            resume = load_checkpoint(work / LAST)
            log.info("%s: fine-tuning goes on after epoch %d (%s)", ctx.identity.run_id,
                     resume["epoch"], work)
        except CheckpointError as e:
            log.warning("%s: fine-tuning starts again: %s", ctx.identity.run_id, e)
            (work / LAST).unlink()
    result = finetune(
        model, masks, epoch_batches, epochs=config.finetune_epochs, lr=config.finetune_lr,
        momentum=config.finetune_momentum, weight_decay=config.finetune_weight_decay,
        grad_clip=config.finetune_grad_clip, device=ctx.settings.device,
        seed=stream_seed(ctx.identity.seed, FINETUNE), autocast=ctx.settings.autocast,
        eval_fn=test_after_epoch, progress=ctx.progress, resume=resume,
        on_epoch=lambda state: save_checkpoint(work / LAST, state))
    return [{"train_loss": loss, "train_acc": acc, **e} for loss, acc, e in
            zip(result.train_loss, result.train_acc, result.eval)]
