"""Cheap measurements at the end of training epochs, without saving weights (issue 28 item 3):
lambda_max of the training loss (Lanczos warm-started from the previous epoch's top
eigenvector, :class:`landscape.hessian.tracking.LambdaTracker`), the saturation of every conv
and linear layer (:mod:`landscape.probes.saturation`; a layer whose output gives no more
samples than channels is left out, its estimate biased low) and the norm of the full-batch
gradient, all on one fixed evaluation set: the first ``n_samples`` training images without
augmentation, BatchNorm in eval mode.

They run inside the training stage (``train.track.*``, off by default; not part of the run's
identity: they consume no random numbers and change no weight, and each epoch reseeds its own
randomness anyway). Each epoch's rows are appended to ``checkpoints/trackers.jsonl`` before the
epoch's resume checkpoint is written, so a killed and resumed run keeps them (an epoch that is
replayed overwrites its rows); the warm start of lambda_max begins again after a resume.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from landscape.hessian.tracking import LambdaTracker
from landscape.modes import snapshot_modes
from landscape.probes import accumulator_saturation, layer_accumulators

log = logging.getLogger("landscape")

TRACKERS_FILE = "trackers.jsonl"
METRICS = ("lambda_max", "saturation", "grad_norm")


@dataclass
class TrackConfig:
    """``train.track``: what is measured after every ``every``-th epoch (all off by default)."""

    lambda_max: bool = False  # top Hessian eigenvalue, warm-started Lanczos
    saturation: bool = False  # per conv / linear layer (threshold 99%, the papers' rule)
    grad_norm: bool = False  # ||mean-loss gradient|| over the evaluation set
    every: int = 1  # epochs between measurements (the last epoch is always measured)
    n_samples: int = 256  # the first n training images, no augmentation
    batch_size: int = 256
    tol: float = 1e-3  # lambda_max: Ritz residual relative to |lambda_max|
    max_iter: int = 200  # lambda_max: cap on Hessian-vector products per epoch
    threshold: float = 0.99  # saturation: share of the variance

    @property
    def enabled(self) -> bool:
        return self.lambda_max or self.saturation or self.grad_norm


def validate_track(cfg: TrackConfig) -> None:
    for name in ("every", "n_samples", "batch_size", "max_iter"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"train.track.{name} must be an integer >= 1, got {v!r}")
    if not (isinstance(cfg.tol, (int, float)) and 0 < cfg.tol < 1):
        raise ValueError(f"train.track.tol must be in (0, 1), got {cfg.tol!r}")
    if not (isinstance(cfg.threshold, (int, float)) and 0 < cfg.threshold <= 1):
        raise ValueError(f"train.track.threshold must be in (0, 1], got {cfg.threshold!r}")


class EpochTrackers:
    """The enabled trackers of one run: :meth:`measure` after an epoch returns its rows and
    appends them to ``<checkpoint_dir>/trackers.jsonl`` (read back by :func:`tracked_rows`)."""

    def __init__(self, cfg: TrackConfig, batches: Sequence[tuple[Tensor, Tensor]], *,
                 epochs: int, checkpoint_dir: Path, device: torch.device, seed: int = 0) -> None:
        self.cfg, self.epochs, self.device = cfg, epochs, device
        self.batches = [(x.to(device), y.to(device)) for x, y in batches]
        self.path = Path(checkpoint_dir) / TRACKERS_FILE
        self._warned_short = False
        self.lam = (LambdaTracker(self.batches, tol=cfg.tol, max_iter=cfg.max_iter, seed=seed,
                                  device=device) if cfg.lambda_max else None)

    def due(self, epoch: int) -> bool:
        return epoch % self.cfg.every == 0 or epoch == self.epochs

    def measure(self, model: nn.Module, epoch: int) -> list[dict[str, Any]]:
        """The rows of ``epoch`` (empty when it is not due); the model's modes and weights are
        left as they were."""
        if not self.due(epoch):
            return []
        restore = snapshot_modes(model)
        rows: list[dict[str, Any]] = []
        try:
            model.eval()
            n = sum(len(y) for _, y in self.batches)
            if self.lam is not None:
                t = self.lam.update(model)
                rows.append({"metric": "track_lambda_max", "value": t.value, "index": epoch,
                             "note": f"hvp={t.num_hvp}; warm={t.warm}; residual={t.residual:.3g}; "
                                     f"converged={t.converged}; tol={self.cfg.tol}; n={n}"})
            if self.cfg.grad_norm:
                rows.append({"metric": "track_grad_norm", "value": self._grad_norm(model),
                             "index": epoch, "note": f"n={n}; mean loss, BN eval"})
            if self.cfg.saturation:
                rows += self._saturation(model, epoch, n)
        finally:
            restore()
        self._append(epoch, rows)
        return rows

    def _saturation(self, model: nn.Module, epoch: int, n: int) -> list[dict[str, Any]]:
        """Rows of the layers whose covariance has more samples than dimensions; the others
        (a 1 x 1 map wider than ``n_samples``) would have a saturation biased low: left out,
        with one warning per run."""
        accs = layer_accumulators(model, [x for x, _ in self.batches], device=self.device)
        short = [f"{name} ({a.count} samples, {a.dim} channels)" for name, a in accs.items()
                 if not a.full_rank]
        if short and not self._warned_short:
            self._warned_short = True
            log.warning("train.track.saturation leaves out %d layer(s) with no more samples than "
                        "channels, whose saturation would be biased low: %s; raise "
                        "train.track.n_samples to include them", len(short), ", ".join(short))
        sat = {name: accumulator_saturation(a, self.cfg.threshold) for name, a in accs.items()
               if a.full_rank}
        return [{"metric": "track_saturation", "value": r.saturation, "index": epoch,
                 "layer": name, "note": f"threshold={self.cfg.threshold}; n={n}"}
                for name, r in sat.items()]

    def _grad_norm(self, model: nn.Module) -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        n = sum(len(y) for _, y in self.batches)
        for x, y in self.batches:
            loss = nn.functional.cross_entropy(model(x), y, reduction="sum") / n
            for acc, g in zip(total, torch.autograd.grad(loss, params)):
                acc += g
        return math.sqrt(sum(float(t.double().square().sum()) for t in total))

    def _append(self, epoch: int, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch, "rows": rows}) + "\n")


def tracked_rows(checkpoint_dir: Path, last_epoch: Optional[int] = None) -> list[dict[str, Any]]:
    """The tracker rows recorded under ``checkpoint_dir`` (see :class:`EpochTrackers`)."""
    path = Path(checkpoint_dir) / TRACKERS_FILE
    if not path.exists():
        return []
    by_epoch: dict[int, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: its epoch is replayed
        by_epoch[int(rec["epoch"])] = rec["rows"]
    return [r for e in sorted(by_epoch) if last_epoch is None or e <= last_epoch
            for r in by_epoch[e]]
