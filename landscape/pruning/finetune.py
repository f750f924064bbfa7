"""Fine-tuning that keeps a pruning mask exactly, and BatchNorm re-calibration.

:class:`MaskKeeper` is the reusable part: any training loop calls ``after_backward()`` (zero the
gradients of pruned weights, before clipping so they do not count in the norm) and
``after_step()`` (re-zero the pruned weights, so neither momentum nor weight decay can revive
them). :func:`finetune` is SGD with the paper's defaults built on it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from landscape.device import progress_enabled
from landscape.hessian.operator import recalibrated_buffers
from landscape.modes import snapshot_modes
from landscape.pruning.masks import check_masks

Batches = Iterable[tuple[Tensor, Tensor]]


class MaskKeeper:
    """Holds keep-masks of ``model`` (moved to each parameter's device) and enforces them."""

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        params = check_masks(model, masks)
        self._pairs = [(p, masks[n].to(p.device)) for n, p in params.items()]

    @torch.no_grad()
    def after_backward(self) -> None:
        """``grad[~mask] = 0`` for every masked parameter that has a gradient."""
        for p, keep in self._pairs:
            if p.grad is not None:
                p.grad.masked_fill_(~keep, 0.0)

    @torch.no_grad()
    def after_step(self) -> None:
        """``w[~mask] = 0`` (exact +0.0) for every masked parameter."""
        for p, keep in self._pairs:
            p.masked_fill_(~keep, 0.0)


@dataclass(frozen=True)
class FinetuneResult:
    """Per-epoch means over training batches (loss in nats per example, accuracy in [0, 1]);
    ``eval`` holds what ``eval_fn(model)`` returned after each epoch (empty without one)."""

    train_loss: tuple[float, ...]
    train_acc: tuple[float, ...]
    eval: tuple[dict[str, float], ...]


def finetune(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    batches: Batches | Callable[[int], Batches],
    *,
    epochs: int = 10,
    lr: float = 1e-4,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    grad_clip: float | None = 0.1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> FinetuneResult:
    """SGD fine-tuning of ``model`` (moved to ``device``, in place) with ``masks`` kept exactly.

    ``batches`` is a re-iterable of (inputs, targets), e.g. a DataLoader, or ``epoch -> batches``.
    Each step: backward, mask gradients, clip the global gradient L2 norm to ``grad_clip``
    (None or 0 = off), SGD step with momentum and L2 weight decay, re-mask the weights.
    ``autocast()`` wraps each forward and loss (e.g. ``DeviceSettings.autocast``: bf16 on
    CUDA, which needs no loss scaling); the weights, the update and the masks stay float32.
    ``seed`` seeds torch's global RNG inside a fork, so the caller's RNG state is untouched.
    The model's train/eval mode is restored on return. A non-finite loss raises
    ``FloatingPointError`` at the end of its epoch (the losses are summed on the device and
    read once per epoch, as in the trainer: no host synchronisation per step).

    ``on_epoch(state)`` is called after every epoch with what ``resume=state`` needs to go on
    from the next one (weights, optimizer state, the forked RNG states, the epochs' results;
    tensors on the CPU): a caller that saves it can resume a fine-tuning stopped on the way
    and get what the uninterrupted one returns (the fine-tune stage does, so a preempted unit
    goes on from its last epoch). ``resume`` must come from the same model, masks, batches
    and settings.
    """
    _check_hparams(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                   grad_clip=grad_clip)
    device = torch.device(device)
    model.to(device)
    keeper = MaskKeeper(model, masks)
    keeper.after_step()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    losses, accs, evals = [], [], []
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        keeper.after_step()
        start = int(resume["epoch"])
        losses, accs = list(resume["train_loss"]), list(resume["train_acc"])
        evals = [dict(e) for e in resume["eval"]]
        if not 0 < start <= epochs or not len(losses) == len(accs) == start:
            raise ValueError(f"resume holds {len(losses)} epoch(s) up to epoch {start}, not a "
                             f"state of this {epochs}-epoch fine-tuning")
    restore = snapshot_modes(model)
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            if resume is not None:
                torch.set_rng_state(resume["rng"])
                if fork_devices and "cuda_rng" in resume:  # absent: saved on the CPU
                    torch.cuda.set_rng_state(resume["cuda_rng"], device)
            for epoch in _epochs(epochs, progress, start):
                model.train()
                # On the device, read once per epoch: no host sync per step (as the trainer)
                total_loss = torch.zeros((), dtype=torch.float64, device=device)
                correct = torch.zeros((), dtype=torch.int64, device=device)
                seen = 0
                epoch_batches = batches(epoch) if callable(batches) else batches
                for x, y in epoch_batches:
                    x, y = x.to(device), y.to(device)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast():
                        out = model(x)
                        loss = loss_fn(out, y)
                    loss.backward()
                    keeper.after_backward()
                    if grad_clip:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                    keeper.after_step()
                    total_loss += loss.detach().double() * len(y)
                    correct += (out.detach().argmax(1) == y).sum()
                    seen += len(y)
                if seen == 0:
                    raise ValueError(f"batches yielded no data in epoch {epoch}")
                mean_loss = float(total_loss) / seen
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"fine-tuning diverged: a non-finite loss in "
                                             f"epoch {epoch + 1} of {epochs}")
                losses.append(mean_loss)
                accs.append(int(correct) / seen)
                if eval_fn is not None:
                    evals.append(dict(eval_fn(model)))
                if on_epoch is not None:
                    on_epoch(_state(model, optimizer, epoch + 1, losses, accs, evals,
                                    fork_devices))
    finally:
        restore()
    return FinetuneResult(tuple(losses), tuple(accs), tuple(evals))


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Batches,
    device: torch.device | str = "cpu",
    *,
    max_batches: int | None = None,
) -> int:
    """Recompute every BatchNorm's running mean / var on ``batches``, in place: the
    example-weighted mean of each batch's train-mode mean and unbiased variance, the other
    modules in eval mode (no dropout). It is :func:`landscape.hessian.recalibrated_buffers`
    (what the Hessian, sharpness and every other ``bn="recalibrated"`` use), written into the
    model, so a recalibrated point means one thing everywhere, however its data is batched.
    The model is moved to ``device`` (in place); its modes and BN momenta are kept. Returns
    the number of batches used.
    """
    device = torch.device(device)
    model.to(device)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return 0
    used = 0

    def counted() -> Iterator[tuple[Tensor, Tensor]]:
        nonlocal used
        for x, *rest in batches:
            if max_batches is not None and used >= max_batches:
                return
            used += 1
            yield x, (rest[0] if rest else None)

    buffers = recalibrated_buffers(model, counted(), device=device)
    if used == 0:
        raise ValueError("recalibrate_bn: batches yielded no data")
    for name, b in model.named_buffers():
        b.copy_(buffers[name])
    return used


def _check_hparams(**hp: float | int | None) -> None:
    if not isinstance(hp["epochs"], int) or hp["epochs"] < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {hp['epochs']!r}")
    if not hp["lr"] > 0:
        raise ValueError(f"lr must be > 0, got {hp['lr']!r}")
    for key in ("momentum", "weight_decay"):
        if not hp[key] >= 0:
            raise ValueError(f"{key} must be >= 0, got {hp[key]!r}")
    if hp["grad_clip"] is not None and not hp["grad_clip"] >= 0:
        raise ValueError(f"grad_clip must be >= 0 or None, got {hp['grad_clip']!r}")


def _epochs(epochs: int, progress: bool, start: int = 0) -> Iterable[int]:
    return tqdm(range(start, epochs), desc="fine-tune", initial=start, total=epochs,
                disable=not progress_enabled(progress))


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, losses: list,
           accs: list, evals: list, devices: list) -> dict[str, Any]:
    """What ``finetune(resume=...)`` goes on from after ``epoch`` epochs, on the CPU."""
    def cpu(tree: Any) -> Any:
        if isinstance(tree, Tensor):
            return tree.detach().to("cpu", copy=True)
        if isinstance(tree, dict):
            return {k: cpu(v) for k, v in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(cpu(v) for v in tree)
        return tree

    state = {"epoch": epoch, "model": cpu(model.state_dict()),
             "optimizer": cpu(optimizer.state_dict()), "rng": torch.get_rng_state(),
             "train_loss": list(losses), "train_acc": list(accs),
             "eval": [dict(e) for e in evals]}
    if devices:
        state["cuda_rng"] = torch.cuda.get_rng_state(devices[0])
    return state
