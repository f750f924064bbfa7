"""The training loop: seeded, resumable from per-epoch checkpoints, AMP/channels_last on CUDA.

Determinism: every epoch reseeds python/numpy/torch and the data-order generator from
``(seed, epoch)``, so a run resumed from the checkpoint of epoch e replays epochs e+1.. exactly
as an uninterrupted run would (on CPU; cuDNN needs ``deterministic=True`` for the same).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm  # not tqdm.auto: its asyncio variant calls iter() on the DataLoader at
# construction, which starts a second iterator (workers, a draw from the data-order generator)

from landscape.data.resident import ResidentLoader, ResidentSet
from landscape.device import DeviceSettings, full_precision, progress_enabled
from landscape.modes import snapshot_modes
from landscape.seeds import TRAIN_EPOCH, seed_everything, stream_seed
from landscape.tracking import TrackConfig, validate_track
from landscape.storage import CheckpointError, clean_temp, load_checkpoint, save_checkpoint

CHECKPOINT_FORMAT = 1
log = logging.getLogger("landscape")


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults are the paper's released training script (CIFAR-10)."""

    epochs: int = 200
    batch_size: int = 128
    eval_batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    # "cosine" (CosineAnnealingLR, T_max = epochs) | "constant" | "step" (lr x gamma at each
    # milestone: fractions of the epochs, e.g. 1/3 of 30 -> after epoch 10; step_milestones)
    scheduler: str = "cosine"
    milestones: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3])  # step only
    gamma: float = 0.1  # step only: the lr factor at each milestone
    grad_clip: Optional[float] = None  # max global gradient L2 norm; None = off
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    deterministic: bool = False
    # torch.compile the model for the training steps; falls back to eager with one warning
    # where compiling fails. How, not what: not part of the run's identity.
    compile: bool = field(default=False, metadata={"identity": False})
    # Measurements after epochs (landscape.tracking; lambda_max, saturation, gradient norm):
    # they change no weight and draw no random number, so not part of the run's identity.
    track: TrackConfig = field(default_factory=TrackConfig, metadata={"identity": False})
    # Epochs whose weights are kept as checkpoints/epoch_<n>.pt (stages measure them as the
    # checkpoint epoch_<n>): a list of epochs in 1..epochs, or a rule: "every:<k>" (k, 2k, ...
    # <= epochs), "log:<n>" (min(n, epochs) log-spaced epochs from 1 to epochs: see
    # saved_epochs), "all". Empty: none. Epoch 0 is init.pt. What is kept, not what is
    # trained: not part of the run's identity.
    save_epochs: Any = field(default_factory=list, metadata={"identity": False})
    # Also keep the optimizer and scheduler state in each epoch_<n>.pt (about twice the bytes
    # with SGD momentum): what rewinding a training to that epoch needs.
    save_optimizer_epochs: bool = field(default=False, metadata={"identity": False})


SCHEDULERS = ("cosine", "constant", "step")
SAVE_RULES = ("every:<k>", "log:<n>", "all")
EPOCH_PREFIX = "epoch_"  # checkpoint names of saved epochs: epoch_<n>


def saved_epochs(cfg: TrainConfig) -> list[int]:
    """The epochs ``train.save_epochs`` keeps, sorted and unique, each in 1..``epochs``.

    * a list: those epochs (repeats count once);
    * ``every:<k>``: k, 2k, 3k, ... up to ``epochs`` (``epochs`` itself only when k divides it);
    * ``log:<n>``: m = min(n, epochs) epochs from 1 to ``epochs``, the i-th (i = 0..m-1)
      ``round(epochs ** (i / (m - 1)))`` (``log:1``: ``[epochs]``), where rounding makes two
      alike the later one moves up to the next free epoch: always m distinct epochs, the
      first 1 and the last ``epochs``;
    * ``all``: 1..``epochs``.

    Raises ValueError naming ``train.save_epochs`` for anything else: an epoch outside
    1..epochs (epoch 0 is the checkpoint ``init``, always kept), a malformed rule, or a rule
    that saves nothing (``every:<k>`` with k > epochs)."""
    spec, epochs = cfg.save_epochs, cfg.epochs
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        bad = [e for e in spec if isinstance(e, bool) or not isinstance(e, int)
               or not 1 <= e <= epochs]
        if bad:
            zero = " (epoch 0 is the checkpoint init, always kept)" if 0 in bad else ""
            raise ValueError(f"train.save_epochs must list epochs in 1..train.epochs={epochs}"
                             f"{zero}, got {list(spec)!r}")
        return sorted(set(spec))
    rule = spec.strip() if isinstance(spec, str) else spec
    if rule == "all":
        return list(range(1, epochs + 1))
    kind, _, arg = rule.partition(":") if isinstance(rule, str) else ("", "", "")
    if kind not in ("every", "log") or not arg.strip().isdigit() or int(arg) < 1:
        raise ValueError(f"train.save_epochs must be a list of epochs or one of {SAVE_RULES} "
                         f"(k, n integers >= 1), got {spec!r}")
    k = int(arg)
    if kind == "every":
        if k > epochs:
            raise ValueError(f"train.save_epochs={spec} saves no epoch: k={k} exceeds "
                             f"train.epochs={epochs}; choose k <= {epochs}")
        return list(range(k, epochs + 1, k))
    m = min(k, epochs)
    if m == 1:
        return [epochs]
    out: list[int] = []
    for i in range(m):
        e = math.floor(epochs ** (i / (m - 1)) + 0.5)
        e = min(max(e, i + 1), epochs - (m - 1 - i))  # room for the ones before and after
        out.append(max(e, out[-1] + 1) if out else e)
    return out


def epoch_checkpoint(epoch: int) -> str:
    """The checkpoint name of a saved epoch: ``epoch_<n>`` (file ``epoch_<n>.pt``)."""
    return f"{EPOCH_PREFIX}{epoch}"


def validate_train_config(cfg: TrainConfig) -> None:
    validate_track(cfg.track)
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.epochs > TRAIN_EPOCH.span:
        raise ValueError(f"train.epochs must be <= {TRAIN_EPOCH.span} (the draws of the "
                         f"'{TRAIN_EPOCH.name}' seed stream), got {cfg.epochs}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"train.lr must be a finite number > 0, got {cfg.lr}")
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"train.scheduler must be one of {SCHEDULERS}, got {cfg.scheduler!r}")
    _validate_step(cfg)
    if cfg.grad_clip is not None and not (cfg.grad_clip > 0 and math.isfinite(cfg.grad_clip)):
        raise ValueError(f"train.grad_clip must be a finite number > 0 or null, got {cfg.grad_clip}")
    if not (isinstance(cfg.weight_decay, (int, float)) and cfg.weight_decay >= 0
            and math.isfinite(cfg.weight_decay)):
        raise ValueError(f"train.weight_decay must be a finite number >= 0, got "
                         f"{cfg.weight_decay}")
    if not (isinstance(cfg.momentum, (int, float)) and 0 <= cfg.momentum < 1):
        raise ValueError(f"train.momentum must be in [0, 1) (SGD's heavy ball; 1 or more "
                         f"makes the updates grow without bound), got {cfg.momentum}")
    kept = saved_epochs(cfg)
    if cfg.save_optimizer_epochs and not kept:
        raise ValueError("train.save_optimizer_epochs=true keeps the optimizer state of the "
                         "saved epochs, but train.save_epochs saves none: set e.g. "
                         "train.save_epochs=[1,2] or log:8")


def _validate_step(cfg: TrainConfig) -> None:
    """``train.milestones`` and ``train.gamma``: used by the step schedule only, so another
    schedule with other values than the defaults would be another cell training the same."""
    default = TrainConfig()
    if cfg.scheduler != "step":
        changed = [f"train.{k}" for k in ("milestones", "gamma")
                   if getattr(cfg, k) != getattr(default, k)]
        if changed:
            raise ValueError(f"{' and '.join(changed)} only apply to train.scheduler=step, got "
                             f"train.scheduler={cfg.scheduler!r}")
        return
    m = list(cfg.milestones)
    if not m or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1
                        for f in m) or any(a >= b for a, b in zip(m, m[1:])):
        raise ValueError("train.milestones must be increasing fractions of the epochs in (0, 1), "
                         f"e.g. [0.333, 0.667], got {cfg.milestones!r}")
    if not (isinstance(cfg.gamma, (int, float)) and not isinstance(cfg.gamma, bool)
            and 0 < cfg.gamma <= 1):
        raise ValueError(f"train.gamma must be in (0, 1], got {cfg.gamma!r}")


def step_milestones(cfg: TrainConfig) -> list[int]:
    """The epochs after which the step schedule multiplies the lr by ``gamma``: each fraction
    of ``train.milestones`` times ``epochs``, rounded half up, at least 1 (a milestone at 0
    would lower the lr before the first epoch). Two fractions on one epoch apply gamma twice."""
    return [max(1, math.floor(f * cfg.epochs + 0.5)) for f in cfg.milestones]


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    learning_rate: float
    epoch_seconds: float


@dataclass
class TrainOutcome:
    history: list[EpochRecord] = field(default_factory=list)
    diverged: bool = False
    diverged_epoch: Optional[int] = None
    resumed_from_epoch: int = 0
    data_path: str = "dataloader"  # "resident" | "dataloader"
    compiled: bool = False  # the training steps ran a torch.compile'd model
    compile_note: str = ""  # why not, when train.compile was asked for and failed

    @property
    def best(self) -> Optional[EpochRecord]:
        """The epoch of highest test accuracy (the first one on ties): ``best.pt``."""
        return best_epoch(self.history)


def best_epoch(history: list[EpochRecord]) -> Optional[EpochRecord]:
    best = None
    for r in history:
        if best is None or r.test_acc > best.test_acc:
            best = r
    return best


@dataclass(frozen=True)
class StaleStatistics:
    """The BatchNorm layer whose running statistics hold the largest share of their initial
    values (mean 0, variance 1): ``share = (1 - momentum) ** steps``, ``steps`` its
    ``num_batches_tracked`` (train-mode forwards)."""

    layer: str
    momentum: float
    steps: int
    share: float


STALE_SHARE = 0.05  # above this share of initial values the train stage warns


def stalest_batchnorm(model: nn.Module) -> Optional[StaleStatistics]:
    """:class:`StaleStatistics` of ``model``'s BatchNorm layers with running statistics and an
    exponential ``momentum``, or None when there is none (a cumulative average,
    ``momentum=None``, forgets its initial values at the first step). Eval-mode numbers (test
    accuracy, the Hessian, probes) use these statistics: torchvision's MNASNet (momentum 3e-4)
    still holds 74% of its initial values after 1000 steps. A layer that never ran in train
    mode while others did (an unused branch) is passed over: eval never runs it either."""
    stale = [StaleStatistics(name, float(m.momentum), int(m.num_batches_tracked),
                             (1.0 - float(m.momentum)) ** int(m.num_batches_tracked))
             for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.momentum is not None and m.num_batches_tracked is not None]
    used = [s for s in stale if s.steps > 0]
    return max(used or stale, key=lambda s: s.share, default=None)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, step_milestones(cfg), gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, settings: DeviceSettings) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction in [0, 1]) over ``loader``, in eval mode.

    The one evaluation policy of every measured accuracy (dense per epoch, pruned,
    fine-tuned): full precision, whatever the run trains with: no autocast, and no TF32 on
    CUDA (:func:`~landscape.device.full_precision`)."""
    restore = snapshot_modes(model)
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)
    correct = torch.zeros((), dtype=torch.int64, device=settings.device)
    n = 0
    try:
        for x, y in loader:
            x, y = settings.to_device(x), y.to(settings.device, non_blocking=settings.non_blocking)
            with full_precision(settings.device):
                out = model(x)
            loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    finally:
        restore()
    if n == 0:
        raise ValueError("evaluation set is empty")
    return float(loss_sum) / n, int(correct) / n


Data = Union[Dataset, ResidentSet]
PREFETCH_FACTOR = 4  # batches each DataLoader worker keeps ready


def default_workers(num_workers: Optional[int], device: torch.device) -> int:
    """``data.num_workers``, or for None: 0 on the CPU (the workers would compete with the
    training threads), min(8, usable CPUs - 1) on CUDA (one CPU stays with the main process)."""
    if num_workers is not None:
        return num_workers
    if device.type != "cuda":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def make_loader(ds: Data, batch_size: int, settings: DeviceSettings, *, shuffle: bool,
                num_workers: Optional[int] = 0, generator: Optional[torch.Generator] = None):
    """A DataLoader over ``ds`` (workers: :func:`default_workers`), or a
    :class:`~landscape.data.resident.ResidentLoader` when ``ds`` is on the device already.

    DataLoader workers are not persistent: a persistent worker keeps its random state from
    one epoch to the next, so a run resumed at epoch e would see other augmentations than an
    uninterrupted one; restarting them costs well under a second per epoch."""
    if isinstance(ds, ResidentSet):
        return ResidentLoader(ds, batch_size, shuffle=shuffle, generator=generator)
    workers = default_workers(num_workers, settings.device)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=settings.pin_memory, generator=generator,
                      persistent_workers=False, drop_last=False,
                      prefetch_factor=PREFETCH_FACTOR if workers else None)


def compile_model(model: nn.Module, enabled: bool) -> "CompiledStep":
    return CompiledStep(model, enabled)


class CompiledStep:
    """The model's forward for training steps: ``torch.compile(model)`` when ``enabled``;
    if compiling fails (no C++ compiler, an unsupported op, ...) at creation or at the first
    call, one warning line and the eager model from then on. ``compiled`` says which ran.
    ``backend``: torch.compile's (None: its default, inductor); the benchmarks' CPU smoke
    runs use ``"eager"`` (graph capture without code generation: seconds, not minutes)."""

    def __init__(self, model: nn.Module, enabled: bool, backend: Optional[str] = None) -> None:
        self.model, self.note, self._fn, self._proven = model, "", None, False
        if enabled:
            try:
                self._fn = (torch.compile(model) if backend is None
                            else torch.compile(model, backend=backend))
            except Exception as e:  # noqa: BLE001 - any failure means: run eagerly
                self._fall_back(e)

    @property
    def compiled(self) -> bool:
        return self._fn is not None

    def _fall_back(self, e: BaseException) -> None:
        self.note = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        log.warning("train.compile: torch.compile failed (%s); training eagerly", self.note)
        self._fn = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._fn is None:
            return self.model(x)
        if self._proven:
            return self._fn(x)
        try:
            out = self._fn(x)
        except Exception as e:  # noqa: BLE001 - compile errors surface at the first call
            self._fall_back(e)
            return self.model(x)
        self._proven = True
        return out


def recorded_data_path(checkpoint_dir: Path) -> Optional[str]:
    """The data path a run's ``last.pt`` was trained with (``"dataloader"`` for checkpoints
    written before the resident path existed), or None when there is no ``last.pt``."""
    last = Path(checkpoint_dir) / "last.pt"
    if not last.exists():
        return None
    return load_checkpoint(last, map_location="cpu", mmap=True).get("data_path", "dataloader")


def saved_epoch(checkpoint_dir: Path) -> Optional[int]:
    """The epoch a run's ``last.pt`` holds (its tensors not read), or None when there is no
    readable one."""
    try:
        return int(load_checkpoint(Path(checkpoint_dir) / "last.pt", mmap=True)["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def train_model(
    model: nn.Module,
    train_set: Data,
    test_set: Data,
    cfg: TrainConfig,
    *,
    seed: int,
    settings: DeviceSettings,
    checkpoint_dir: Path,
    num_workers: Optional[int] = 0,
    progress: bool = True,
    on_epoch: Optional[Callable[[EpochRecord], None]] = None,
    run_id: Optional[str] = None,
    measure: Optional[Callable[[EpochRecord], None]] = None,
) -> TrainOutcome:
    """Train ``model`` in place; resume from ``checkpoint_dir/last.pt`` when present.

    Writes ``init.pt`` (the weights before the first step; needed by the Hessian and importance
    stages), ``last.pt`` after every epoch, ``epoch_<n>.pt`` after each epoch n of
    ``train.save_epochs`` (:func:`saved_epochs`; with the optimizer and scheduler state when
    ``train.save_optimizer_epochs``), ``best.pt`` whenever the test accuracy beats every
    earlier epoch (the paper's pruned checkpoint) and ``final.pt`` at the end. A non-finite training
    loss stops the run (checked once per epoch, to avoid a host sync per step) and returns
    ``diverged=True``; the last finite checkpoint is kept. With ``run_id`` every checkpoint
    records it and a ``last.pt`` of another run is refused.

    ``measure(record)`` runs after each epoch's evaluation and before its ``last.pt`` (a kill
    in it replays the epoch: measurements of the epoch are redone); ``on_epoch(record)`` after
    ``last.pt``.

    ``train_set``/``test_set``: Datasets (the DataLoader path) or
    :class:`~landscape.data.resident.ResidentSet` (held on the device). ``last.pt`` records
    the training path; resuming it with the other one is refused (its draws differ).

    The caller must be the only writer of ``checkpoint_dir`` (the pipeline trains under the
    lock of the run's ``train`` unit): the temp files of a killed writer there are removed
    when training starts or resumes and when it ends.
    """
    validate_train_config(cfg)
    checkpoint_dir = Path(checkpoint_dir)
    clean_temp(checkpoint_dir)  # of a killed run's checkpoint writes
    settings.place(model)  # on the device; channels_last on CUDA
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg)
    outcome = TrainOutcome()
    last = checkpoint_dir / "last.pt"
    tag = {"format": CHECKPOINT_FORMAT, **({"run_id": run_id} if run_id else {})}
    outcome.data_path = "resident" if isinstance(train_set, ResidentSet) else "dataloader"
    if last.exists():
        state = load_checkpoint(last, map_location=settings.device, run_id=run_id)
        recorded = state.get("data_path", "dataloader")
        if recorded != outcome.data_path:
            raise ValueError(
                f"{last} (epoch {state['epoch']}) was trained with the {recorded} data path, "
                f"this run would go on with the {outcome.data_path} one (other augmentation "
                f"draws): set data.loader={recorded} (or auto) to resume it exactly, or delete "
                f"{checkpoint_dir} to train again")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        outcome.history = [EpochRecord(**r) for r in state["history"]]
        outcome.resumed_from_epoch = int(state["epoch"])
        if outcome.history and not (checkpoint_dir / "best.pt").exists():
            log.warning("%s: %s is missing; it is written again only if a later epoch beats "
                        "epoch %d", run_id or "training", checkpoint_dir / "best.pt",
                        outcome.best.epoch)
        log.info("%s: %s epoch %d of %d (%s)", run_id or "training",
                 "resuming from the checkpoint of" if outcome.history else "starting after",
                 outcome.resumed_from_epoch, cfg.epochs, last)  # no history: an IMP round
    elif not (checkpoint_dir / "init.pt").exists():
        save_checkpoint(checkpoint_dir / "init.pt", {"model": model.state_dict(), "epoch": 0,
                                                     **tag})
    test_loader = make_loader(test_set, cfg.eval_batch_size, settings, shuffle=False,
                              num_workers=num_workers)
    gen = torch.Generator()
    train_loader = make_loader(train_set, cfg.batch_size, settings, shuffle=True,
                               num_workers=num_workers, generator=gen)
    criterion = nn.CrossEntropyLoss()
    keep = set(saved_epochs(cfg))
    step_model = compile_model(model, cfg.compile)
    for epoch in range(outcome.resumed_from_epoch + 1, cfg.epochs + 1):
        epoch_seed = stream_seed(seed, TRAIN_EPOCH, epoch - 1)
        seed_everything(epoch_seed)
        gen.manual_seed(epoch_seed)
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)
        correct = torch.zeros((), dtype=torch.int64, device=settings.device)
        n = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not progress_enabled(progress))
        for x, y in bar:
            x, y = settings.to_device(x), y.to(settings.device, non_blocking=settings.non_blocking)
            with settings.autocast():
                out = step_model(x)
                loss = criterion(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            loss_sum += loss.detach().double() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            n += len(y)
        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            outcome.diverged, outcome.diverged_epoch = True, epoch
            break
        sched.step()
        test_loss, test_acc = evaluate(model, test_loader, settings)
        record = EpochRecord(epoch, train_loss, int(correct) / n, test_loss, test_acc, lr,
                             time.perf_counter() - t0)
        best = outcome.best
        outcome.history.append(record)
        if best is None or record.test_acc > best.test_acc:  # before last.pt: a kill in between
            save_checkpoint(checkpoint_dir / "best.pt", {  # replays this epoch and rewrites it
                "model": model.state_dict(), "epoch": epoch, "test_acc": test_acc, **tag})
        if epoch in keep:  # before last.pt too: a kill in between replays the epoch
            save_checkpoint(checkpoint_dir / f"{epoch_checkpoint(epoch)}.pt", {
                "model": model.state_dict(), "epoch": epoch, "test_acc": test_acc, **tag,
                **({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
                   if cfg.save_optimizer_epochs else {})})
        if measure is not None:  # before last.pt: a kill in between replays this epoch
            measure(record)
        save_checkpoint(last, {
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": epoch,
            "history": [asdict(r) for r in outcome.history],
            "data_path": outcome.data_path, **tag,
        })
        if on_epoch is not None:
            on_epoch(record)
    outcome.compiled, outcome.compile_note = step_model.compiled, step_model.note
    if not outcome.diverged:
        save_checkpoint(checkpoint_dir / "final.pt", {"model": model.state_dict(),
                                                      "epoch": cfg.epochs, **tag})
    clean_temp(checkpoint_dir)
    return outcome
