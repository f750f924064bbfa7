"""1D and 2D loss slices around a set of weights: ``L(w0 + a d1 [+ b d2])`` on a grid.

The loss is the mean ``loss_fn`` (cross-entropy by default) over a fixed evaluation set (a
list of ``(inputs, targets)`` batches already on the device), with the accuracy (a fraction in
[0, 1]) beside it. The model is evaluated in eval mode; BatchNorm uses its running statistics
(``bn="eval"``, the default) or statistics recomputed at every point on ``bn_batches``
(``bn="recalibrated"``; Li et al. keep the trained statistics). The weights are moved in place
and restored bit-identically (:class:`~landscape.geometry.weights.WeightShift`). Given a
``journal`` (:mod:`landscape.journal`) a slice saves its grid point by point and, stopped on
the way and given the journal again, evaluates only the points it had not: each point is
evaluated from ``w0`` alone, so the grid equals an uninterrupted one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from landscape.device import progress_enabled
from landscape.geometry.weights import WeightShift
from landscape.journal import Journal, saved, state_digest
from landscape.modes import eval_mode
from landscape.pruning import recalibrate_bn

Batches = Sequence[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]
BN_MODES = ("eval", "recalibrated")


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Batches,
                     loss_fn: LossFn = F.cross_entropy) -> tuple[float, float]:
    """(mean loss, accuracy) over every example of ``batches``, in eval mode (the model's modes
    are restored); ``loss_fn`` returns a batch mean, weighted here by batch size. The accuracy
    is NaN unless the targets are class indices."""
    total, correct, n = None, None, 0  # summed on the device, read once (no sync per batch)
    classes = True
    with eval_mode(model):
        for x, y in batches:
            out = model(x)
            loss = loss_fn(out, y).double() * len(y)
            total = loss if total is None else total + loss
            classes = classes and y.dim() == 1 and not y.is_floating_point() and out.dim() == 2
            if classes:
                hits = (out.argmax(1) == y).sum()
                correct = hits if correct is None else correct + hits
            n += len(y)
    if n == 0:
        raise ValueError("batches hold no examples")
    return float(total) / n, (int(correct) / n if classes else float("nan"))


def check_coords(name: str, coords: Sequence[float]) -> np.ndarray:
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or not np.isfinite(c).all():
        raise ValueError(f"{name} must be a non-empty 1-D sequence of finite numbers")
    if c.size > 1 and np.ptp(c) == 0:
        raise ValueError(f"{name} spans a range of zero width ({c[0]:g} .. {c[-1]:g})")
    return c


@dataclass(frozen=True, eq=False)
class Slice:
    """Loss and accuracy on the grid ``coords[0] x coords[1]`` (shape ``(n1,)`` or
    ``(n1, n2)``, row i = ``coords[0][i]``); ``bn`` the BatchNorm mode."""

    coords: tuple[np.ndarray, ...]
    loss: np.ndarray
    accuracy: np.ndarray
    bn: str


def loss_slice(model: nn.Module, batches: Batches,
               directions: Sequence[Mapping[str, Tensor]], coords: Sequence[Sequence[float]],
               *, loss_fn: LossFn = F.cross_entropy, bn: str = "eval",
               bn_batches: Batches | None = None, progress: bool = False,
               journal: Optional[Journal] = None) -> Slice:
    """The loss of ``model`` at ``w0 + sum_i coords_i d_i`` for every point of the grid of
    ``coords`` (one 1-D sequence per direction; one or two directions). One forward pass per
    batch per point; the model is left exactly as it was. ``journal``: the grid is saved
    under ``"slice"`` after every point (with the coordinates, ``bn`` and a digest of the
    directions: a grid saved for others is ignored), and the points saved are not evaluated
    again; like the Hessian's, the journal does not record the model or the batches."""
    if len(directions) not in (1, 2) or len(coords) != len(directions):
        raise ValueError("give one or two directions and one coordinate sequence for each; "
                         f"got {len(directions)} directions, {len(coords)} coordinate lists")
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if bn == "recalibrated" and not bn_batches:
        raise ValueError("bn='recalibrated' needs bn_batches (training batches)")
    axes = tuple(check_coords(f"coords[{i}]", c) for i, c in enumerate(coords))
    shape = tuple(len(a) for a in axes)
    loss, acc, done = np.empty(shape), np.empty(shape), np.zeros(shape, dtype=bool)
    params: dict = {}
    if journal is not None:
        params = {"coords": [a.tolist() for a in axes], "bn": bn, "directions": state_digest(
            "directions", {str(i): d for i, d in enumerate(directions)})}
        state = saved(journal, "slice", params)
        if state is not None:
            loss, acc, done = (state[k].numpy().copy() for k in ("loss", "accuracy", "done"))
    points = [idx for idx in itertools.product(*(range(n) for n in shape)) if not done[idx]]
    with WeightShift(model, directions) as shift:
        for idx in tqdm(points, desc="loss slice", leave=False, initial=int(done.sum()),
                        total=done.size, disable=not progress_enabled(progress)):
            shift.set([a[i] for a, i in zip(axes, idx)])
            if bn == "recalibrated":
                recalibrate_bn(model, bn_batches, next(model.parameters()).device)
            loss[idx], acc[idx] = evaluate_batches(model, batches, loss_fn)
            done[idx] = True
            if journal is not None:
                journal.put("slice", {"params": params, **{
                    k: torch.from_numpy(v.copy()) for k, v in
                    (("loss", loss), ("accuracy", acc), ("done", done))}})
    return Slice(axes, loss, acc, bn)
