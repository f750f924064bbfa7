"""The linear path between two networks and its loss barrier (linear mode connectivity;
Frankle et al. 2020).

``w(alpha) = (1 - alpha) w_a + alpha w_b``. An interpolated network's BatchNorm running
statistics belong to neither end: by default they are recomputed at every point on
``bn_batches`` (``bn="recalibrated"``); ``bn="interpolated"`` interpolates them like the weights
(the artefact behind inflated barriers, reported against dnn-mode-connectivity #8). The barrier
is ``max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))]``, in the units of the loss.
Given a ``journal`` (:mod:`landscape.journal`) the path is saved point by point and, stopped on
the way, goes on at the first point it had not evaluated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from landscape.geometry.slices import Batches, LossFn, check_coords, evaluate_batches
from landscape.journal import Journal, saved
from landscape.pruning import recalibrate_bn

PATH_BN = ("recalibrated", "interpolated")


@dataclass(frozen=True, eq=False)
class Path:
    """Loss and accuracy at each ``alpha`` of the path; ``bn`` the BatchNorm handling."""

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    bn: str

    @property
    def barrier(self) -> float:
        return loss_barrier(self.alphas, self.loss)


def loss_barrier(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """``max_i [L_i - ((1 - a_i) L(0) + a_i L(1))]``; ``alphas`` must contain 0 and 1."""
    a, y = np.asarray(alphas, np.float64), np.asarray(losses, np.float64)
    if a.shape != y.shape or a.ndim != 1:
        raise ValueError("alphas and losses must be 1-D sequences of the same length")
    if not (np.isclose(a, 0).any() and np.isclose(a, 1).any()):
        raise ValueError("alphas must contain both ends of the path, 0 and 1")
    l0, l1 = y[np.isclose(a, 0)][0], y[np.isclose(a, 1)][0]
    return float(np.max(y - ((1 - a) * l0 + a * l1)))


def check_same_architecture(a: nn.Module, b: nn.Module) -> None:
    """The two models have the same parameters and buffers (names, shapes, dtypes)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        only = sorted(set(sa) ^ set(sb))[:3]
        raise ValueError(f"the two networks differ in their parameters/buffers (e.g. {only}): "
                         "checkpoints of different architectures cannot be interpolated")
    for k in sa:
        if sa[k].shape != sb[k].shape or sa[k].dtype != sb[k].dtype:
            raise ValueError(f"{k}: shape/dtype {tuple(sa[k].shape)}/{sa[k].dtype} vs "
                             f"{tuple(sb[k].shape)}/{sb[k].dtype}: different architectures")


@torch.no_grad()
def linear_path(model_a: nn.Module, model_b: nn.Module, batches: Batches,
                alphas: Sequence[float], *, loss_fn: LossFn = F.cross_entropy,
                bn: str = "recalibrated", bn_batches: Batches | None = None,
                journal: Optional[Journal] = None, key: str = "path") -> Path:
    """Loss and accuracy of ``(1 - alpha) w_a + alpha w_b`` at each of ``alphas`` on
    ``batches`` (see the module docstring). One working copy of ``model_a`` is made; neither
    model is changed. ``journal``: the points so far are saved under ``key`` (with the alphas
    and ``bn``; not the models or the batches: one key per pair of networks) after each
    point, and those saved are not evaluated again."""
    if bn not in PATH_BN:
        raise ValueError(f"bn must be one of {PATH_BN}, got {bn!r}")
    if bn == "recalibrated" and not bn_batches:
        raise ValueError("bn='recalibrated' needs bn_batches (training batches)")
    check_same_architecture(model_a, model_b)
    a = check_coords("alphas", alphas)
    params = {"alphas": a.tolist(), "bn": bn}
    state = saved(journal, key, params)
    loss, acc = ((state["loss"].tolist(), state["accuracy"].tolist()) if state is not None
                 else ([], []))
    if len(loss) < len(a):  # points left: one working copy
        work = copy.deepcopy(model_a)
        sa, sb, target = model_a.state_dict(), model_b.state_dict(), work.state_dict()
        device = next(work.parameters()).device
        for alpha in a[len(loss):]:
            for k, t in target.items():
                if t.is_floating_point():
                    t.copy_(torch.lerp(sa[k], sb[k].to(sa[k]), float(alpha)))
            if bn == "recalibrated":
                recalibrate_bn(work, bn_batches, device)
            point = evaluate_batches(work, batches, loss_fn)
            loss.append(point[0])
            acc.append(point[1])
            if journal is not None:
                journal.put(key, {"params": params,
                                  "loss": torch.tensor(loss, dtype=torch.float64),
                                  "accuracy": torch.tensor(acc, dtype=torch.float64)})
    return Path(a, np.array(loss), np.array(acc), bn)
