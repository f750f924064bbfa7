"""Evaluation sets the measuring stages share: fixed batches of training images on the device."""

from __future__ import annotations

import torch
from torch.utils.data import Subset

from landscape.seeds import seed_everything
from landscape.stages.base import CellContext, RunContext
from landscape.train import make_loader


def evaluation_batches(ctx: RunContext | CellContext, n: int, batch_size: int, *, augment: bool = False,
                       seed: int = 0) -> list:
    """The first ``n`` training images on the device: without augmentation in a fixed order,
    or (``augment``) one draw of the training augmentation in a random order, both from
    ``seed``, drawn once: every Hessian-vector product sees the same batches."""
    ds = Subset(ctx.data.train if augment else ctx.data.train_eval,
                range(min(n, len(ctx.data.train))))
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)  # the transforms draw from the global generators
        gen = torch.Generator().manual_seed(seed)
        loader = make_loader(ds, batch_size, ctx.settings, shuffle=augment, generator=gen)
        return [(ctx.settings.to_device(x), y.to(ctx.settings.device)) for x, y in loader]


def test_batches(ctx: RunContext | CellContext, n: int, batch_size: int) -> list:
    """The first ``n`` test images on the device, in order, in batches."""
    ds = Subset(ctx.data.test, range(min(n, len(ctx.data.test))))
    loader = make_loader(ds, batch_size, ctx.settings, shuffle=False)
    return [(ctx.settings.to_device(x), y.to(ctx.settings.device)) for x, y in loader]
