"""Evaluation sets the measuring stages share: fixed batches of training images on the device."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Subset

from landscape.seeds import seed_everything
from landscape.stages.base import CellContext, RunContext
from landscape.train import make_loader


# BatchNorm statistics recalibrated as the example-weighted mean over their batches, as the
# Hessian's (landscape.pruning.recalibrate_bn). Before, the geometry's recalibration weighted
# every batch alike: the same statistics when the batches are equal, else not.
RECALIBRATION = "per example"


def recalibration_marker(n: int | None, batch_size: int) -> dict[str, str]:
    """The setting recorded with a unit that recalibrates BN on ``n`` images in batches of
    ``batch_size`` (``n`` None: a whole split, of any size) when its batches can differ in
    size: a unit written before, whose statistics then differ, is recomputed; one whose
    batches were equal is kept (nothing to record)."""
    return {} if n is not None and n % batch_size == 0 else {"bn_recalibration": RECALIBRATION}


def bn_recalibration_marker(config: Any) -> dict[str, str]:
    """:func:`recalibration_marker` of a stage whose ``bn`` setting may be ``recalibrated``
    on its ``n_samples`` images in batches of ``batch_size`` (slices, connectivity)."""
    return (recalibration_marker(config.n_samples, config.batch_size)
            if config.bn == "recalibrated" else {})


def eval_split(ctx: RunContext | CellContext, split: str):
    """The split ``split`` (``test``, ``train_eval`` or ``holdout``: no augmentation) for
    evaluation: held on the device when ``data.loader`` resolves to the resident path (its
    batches equal the DataLoader's bit for bit, tests/test_resident.py), else the Dataset."""
    data_path = getattr(ctx, "data_path", None)
    if data_path is not None and data_path() == "resident":
        return getattr(ctx.resident, split)
    return getattr(ctx.data, split)


def evaluation_batches(ctx: RunContext | CellContext, n: int, batch_size: int, *, augment: bool = False,
                       seed: int = 0) -> list:
    """The first ``n`` training images on the device: without augmentation in a fixed order,
    or (``augment``) one draw of the training augmentation in a random order, both from
    ``seed``, drawn once: every Hessian-vector product sees the same batches."""
    n = min(n, len(ctx.data.train))
    if augment:  # the DataLoader's draws (kept: results made before the resident path)
        ds = Subset(ctx.data.train, range(n))
    else:
        ds = _first(eval_split(ctx, "train_eval"), n)
    return seeded_batches(ctx, ds, batch_size, seed, shuffle=augment)


def seeded_batches(ctx: RunContext | CellContext, ds, batch_size: int, seed: int, *,
                   shuffle: bool = False) -> list:
    """The batches of ``ds`` on the device, drawn once: its random transforms (and, with
    ``shuffle``, the order) from ``seed`` (torch's global generator forked: the caller's is
    kept)."""
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)  # the transforms draw from the global generators
        gen = torch.Generator().manual_seed(seed)
        loader = make_loader(ds, batch_size, ctx.settings, shuffle=shuffle, generator=gen)
        return [(ctx.settings.to_device(x), y.to(ctx.settings.device)) for x, y in loader]


def test_batches(ctx: RunContext | CellContext, n: int, batch_size: int) -> list:
    """The first ``n`` test images on the device, in order, in batches."""
    ds = eval_split(ctx, "test")
    loader = make_loader(_first(ds, min(n, len(ds))), batch_size, ctx.settings, shuffle=False)
    return [(ctx.settings.to_device(x), y.to(ctx.settings.device)) for x, y in loader]


def _first(ds, n: int):
    """The first ``n`` items of a Dataset or of a resident split."""
    return ds.subset(torch.arange(n)) if hasattr(ds, "subset") else Subset(ds, range(n))
