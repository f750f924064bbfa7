"""Training stage: the run's model trained from its seeded init (resumable from the last epoch
checkpoint); rows per epoch (losses, accuracies, learning rate, time), ``diverged``,
``num_params``, ``train_seconds`` and, for a model with BatchNorm, ``bn_initial_share``: the
largest share of initial values left in a BatchNorm layer's running statistics
(:func:`~landscape.train.stalest_batchnorm`; above 5% a warning says that eval-mode numbers
use statistics that training has barely moved)."""

from __future__ import annotations

import logging
import time
from typing import Optional

from landscape import results
from landscape.results import RunPaths
from landscape.stages.base import RunContext, Stage, Unit, register_stage
from landscape.stages.batches import evaluation_batches
from landscape.tracking import TRACKERS_FILE, EpochTrackers, tracked_rows
from landscape.train import (
    STALE_SHARE, TrainConfig, recorded_data_path, stalest_batchnorm, train_model,
    validate_train_config,
)

log = logging.getLogger("landscape")
EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "learning_rate",
                 "epoch_seconds")


@register_stage
class TrainStage(Stage):
    name = "train"
    config_field = "train"
    needs_trained = False
    trains = True

    def enabled(self, config: TrainConfig) -> bool:
        return True

    def validate(self, config: TrainConfig) -> None:
        validate_train_config(config)

    def settings(self, config: TrainConfig) -> dict:
        return {}  # the training settings are part of the cell's identity (its hash)

    def missing_outputs(self, paths: RunPaths) -> Optional[str]:
        """A deleted ``final.pt`` of a finished training is recomputed (resumed from
        ``last.pt``: no epoch is trained again when it holds the last one)."""
        ok = (results.read_done(paths.run_dir, self.name) or {}).get("status") == "ok"
        final = paths.checkpoints / "final.pt"
        return f"{final} is missing" if ok and not final.exists() else None

    def run(self, ctx: RunContext, config: TrainConfig, unit: Unit) -> list[dict]:
        model = ctx.build_model()
        t0 = time.perf_counter()
        path = ctx.data_path(recorded_data_path(ctx.checkpoint_dir))
        data = ctx.resident if path == "resident" else ctx.data
        trackers = _trackers(ctx, config)
        outcome = train_model(
            model, data.train, data.test, config, seed=ctx.identity.seed,
            settings=ctx.settings, checkpoint_dir=ctx.checkpoint_dir,
            num_workers=ctx.num_workers, progress=ctx.progress, run_id=ctx.identity.run_id,
            measure=(lambda r: trackers.measure(model, r.epoch)) if trackers else None,
        )
        rows: list[dict] = [{"metric": m, "value": getattr(r, m), "index": r.epoch}
                            for r in outcome.history for m in EPOCH_METRICS]
        rows.append({"metric": "diverged", "value": float(outcome.diverged),
                     "index": outcome.diverged_epoch})
        best = outcome.best
        if best is not None:
            rows.append({"metric": "best_test_acc", "value": best.test_acc, "index": best.epoch})
        rows.append({"metric": "num_params", "value": ctx.identity.num_params})
        rows.append({"metric": "train_seconds", "value": time.perf_counter() - t0})
        rows.append({"metric": "resident_data", "value": float(outcome.data_path == "resident"),
                     "note": outcome.data_path})
        rows.append({"metric": "compiled", "value": float(outcome.compiled),
                     "note": outcome.compile_note or None})
        stale = stalest_batchnorm(model)
        pretrained = ctx.identity.weights is not None  # its statistics are the file's
        if stale is not None:
            rows.append({"metric": "bn_initial_share", "value": stale.share,
                         "layer": stale.layer,
                         "note": f"(1 - momentum)^steps: momentum={stale.momentum:g}, "
                                 f"steps={stale.steps}; the largest over BatchNorm layers"
                                 + ("; initial = model.weights" if pretrained else "")})
            if stale.share > STALE_SHARE and not (outcome.diverged or pretrained):
                log.warning(
                    "%s: the running statistics of BatchNorm %s (momentum %g) still hold %.1f%% "
                    "of their initial values (mean 0, variance 1) after %d training step(s): "
                    "every eval-mode number of this run (test accuracy, Hessian, probes, ...) "
                    "uses them; train for more steps", ctx.identity.run_id, stale.layer,
                    stale.momentum, 100 * stale.share, stale.steps)
        if config.track.enabled:
            last = outcome.history[-1].epoch if outcome.history else 0
            rows += tracked_rows(ctx.checkpoint_dir, last)
        if outcome.diverged:
            log.warning("run %s diverged at epoch %d (non-finite training loss)",
                        ctx.identity.run_id, outcome.diverged_epoch)
        return rows


def _trackers(ctx: RunContext, config: TrainConfig) -> Optional[EpochTrackers]:
    """The run's epoch trackers (``train.track``), or None when none is on. A training that
    starts from scratch (no ``last.pt``) forgets the rows of an earlier attempt."""
    if not (ctx.checkpoint_dir / "last.pt").exists():
        (ctx.checkpoint_dir / TRACKERS_FILE).unlink(missing_ok=True)
    t = config.track
    if not t.enabled:
        return None
    return EpochTrackers(t, evaluation_batches(ctx, t.n_samples, t.batch_size),
                         epochs=config.epochs, checkpoint_dir=ctx.checkpoint_dir,
                         device=ctx.settings.device, seed=ctx.identity.seed or 0)
