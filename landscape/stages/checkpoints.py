"""Which weights a stage measures: the checkpoint names (``init``, ``final``, ``best``, a saved
epoch ``epoch_<n>``, ``saved`` for every saved epoch), their checks against
``train.save_epochs`` and the epoch each one holds."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from landscape.train import EPOCH_PREFIX, TrainConfig, epoch_checkpoint, saved_epochs

# The weights before the first step, after training, and of the epoch of best test accuracy.
# A stage's ``checkpoints`` may also name a saved epoch, epoch_<n> (train.save_epochs), or
# SAVED: every saved epoch (expanded by expand_checkpoints).
CHECKPOINTS = ("init", "final", "best")
SAVED = "saved"
CHECKPOINT_WORDS = f"{CHECKPOINTS + (SAVED,)} or {EPOCH_PREFIX}<n> (an epoch of train.save_epochs)"


def checkpoint_epoch_number(checkpoint: Any) -> Optional[int]:
    """n for the checkpoint name ``epoch_<n>`` (n a non-negative integer without sign or
    leading zeros), else None."""
    if not isinstance(checkpoint, str) or not checkpoint.startswith(EPOCH_PREFIX):
        return None
    digits = checkpoint[len(EPOCH_PREFIX):]
    if not digits.isdigit() or not digits.isascii() or (len(digits) > 1 and digits[0] == "0"):
        return None
    return int(digits)


def is_checkpoint(name: Any) -> bool:
    """One of :data:`CHECKPOINTS` or a saved epoch ``epoch_<n>``."""
    return name in CHECKPOINTS or checkpoint_epoch_number(name) is not None


def check_checkpoints(group: str, checkpoints: Sequence[str]) -> None:
    """``<group>.checkpoints`` must be a non-empty list of :data:`CHECKPOINTS`, saved epochs
    ``epoch_<n>`` and :data:`SAVED` (whether the epochs are saved: :func:`check_saved`)."""
    bad = [c for c in checkpoints or () if c != SAVED and not is_checkpoint(c)]
    if not checkpoints or bad:
        raise ValueError(f"{group}.checkpoints must be a non-empty list of {CHECKPOINT_WORDS}, "
                         f"got {list(checkpoints)}")


def expand_checkpoints(setting: str, checkpoints: Sequence[str], train: TrainConfig,
                       *, versus_final: bool = False) -> list[str]:
    """``checkpoints`` with :data:`SAVED` replaced by ``epoch_<n>`` for every epoch that
    ``train.save_epochs`` saves, in epoch order (a checkpoint named twice stays once). The
    last epoch is left out when ``final`` is named too: the same weights, measured twice
    (``log:8`` saves the last epoch); and when each checkpoint is compared with the final
    weights (``versus_final``, ``cka.to_final``): a comparison with itself."""
    if SAVED not in checkpoints:
        return list(checkpoints)
    epochs = saved_epochs(train)
    if not epochs:
        raise ValueError(f"{setting} includes {SAVED!r} (every epoch of "
                         f"train.save_epochs), but train.save_epochs saves none: set e.g. "
                         f"train.save_epochs=log:8")
    if "final" in checkpoints or versus_final:
        epochs = [e for e in epochs if e != train.epochs]
    if versus_final and not epochs:
        raise ValueError(f"{setting} includes {SAVED!r}, each compared with the final weights, "
                         f"but train.save_epochs saves only the last epoch ({train.epochs}), "
                         f"the final weights themselves: save earlier epochs, e.g. "
                         f"train.save_epochs=log:8")
    out: list[str] = []
    for c in checkpoints:
        for name in ([epoch_checkpoint(e) for e in epochs] if c == SAVED else [c]):
            if name not in out:
                out.append(name)
    return out


def check_saved(setting: str, checkpoints: Sequence[str], train: TrainConfig) -> None:
    """Every ``epoch_<n>`` among ``checkpoints`` (the value of ``setting``, e.g.
    ``hessian.checkpoints``) must be an epoch that ``train.save_epochs`` saves (epoch_0 is
    init; n <= train.epochs)."""
    kept = saved_epochs(train)
    for c in checkpoints:
        n = checkpoint_epoch_number(c)
        if n is None:
            continue
        if n == 0:
            raise ValueError(f"{setting}: {c} is the weights before training: name that "
                             f"checkpoint 'init'")
        if n > train.epochs:
            raise ValueError(f"{setting}: {c} is outside the training's epochs "
                             f"1..train.epochs={train.epochs}")
        if n not in kept:
            raise ValueError(f"{setting} asks for {c}, which train.save_epochs="
                             f"{train.save_epochs!r} does not save (it saves "
                             f"{kept if kept else 'none'}): add {n} to train.save_epochs")


def checkpoint_epoch(checkpoint: Any, train: TrainConfig, best: Optional[int] = None
                     ) -> Optional[int]:
    """The epoch whose weights the checkpoint holds: init 0, final ``train.epochs``,
    epoch_<n> n, best ``best`` (the run's best epoch, when known); None for anything else."""
    if checkpoint == "init":
        return 0
    if checkpoint == "final":
        return train.epochs
    if checkpoint == "best":
        return best
    return checkpoint_epoch_number(checkpoint)


def check_saved_checkpoints(stage: Any, config: Any, train: TrainConfig) -> None:
    """The saved epochs (``epoch_<n>``) an enabled stage's checkpoint lists
    (``Stage.checkpoint_fields``), ``checkpoint`` or ``rewind`` name must be epochs that
    ``train.save_epochs`` saves."""
    group = stage.config_field or f"stages.{stage.name}"
    for name in stage.checkpoint_fields:
        checkpoints = getattr(config, name, None)
        if isinstance(checkpoints, (list, tuple)):
            check_saved(f"{group}.{name}", checkpoints, train)
    for name in ("checkpoint", "rewind"):  # one checkpoint: prune's, imp's rewind point
        checkpoint = getattr(config, name, None)
        if isinstance(checkpoint, str):
            check_saved(f"{group}.{name}", [checkpoint], train)
