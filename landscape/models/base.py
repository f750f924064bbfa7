"""Shared base of every architecture: the RF pool spec and an input-size check.

A pool that shrinks the feature map to nothing is reported at the first forward with a given
input size (and by :func:`check_input_size` at build time), naming the pool setting, the
input size, the layer where the map vanished and the smallest input size that works.
"""

from __future__ import annotations

import torch
from torch import nn

from landscape.models.rf_pool import PoolSpec
from landscape.modes import snapshot_modes


class InputTooSmallError(ValueError):
    """The input is too small for the network's pooling (the RF pool included)."""


class RFNet(nn.Module):
    """Base class: holds ``pool_spec`` and validates each new input size once."""

    def __init__(self, pool_spec: PoolSpec, in_channels: int) -> None:
        super().__init__()
        self.pool_spec = pool_spec
        self.in_channels = in_channels
        self._valid_sizes: set[tuple[int, int]] = set()
        self._checking = False
        self.register_forward_pre_hook(_check_on_forward)


def _check_on_forward(module: RFNet, args: tuple) -> None:
    if module._checking or not args or not torch.is_tensor(args[0]):
        return
    x = args[0]
    if x.dim() != 4:
        raise ValueError(
            f"expected an input of shape (batch, channels, height, width), got {tuple(x.shape)}"
        )
    size = (int(x.shape[-2]), int(x.shape[-1]))
    if size not in module._valid_sizes:
        check_input_size(module, size)


_size_checks = 0  # > 0 while an RFNet runs a dry forward to check an input size


def in_size_check() -> bool:
    """True while an RFNet's input-size dry run (a zero image) is running: forward hooks
    that record activations should ignore that forward (see ``landscape.activations``)."""
    return _size_checks > 0


def _dry_run(model: RFNet, size: tuple[int, int]) -> str | None:
    """Forward a zero image; return the name of the layer whose output vanished, or None."""
    global _size_checks
    last = {"name": "<input>"}
    vanished: list[str] = []

    def hook(name: str):
        def fn(_m, _i, out):
            last["name"] = name
            if torch.is_tensor(out) and out.dim() == 4 and min(out.shape[-2:]) < 1 and not vanished:
                vanished.append(name)

        return fn

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if n and not list(m.children())
    ]
    p = next(model.parameters())
    restore = snapshot_modes(model)
    model._checking = True
    _size_checks += 1
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, model.in_channels, *size, device=p.device, dtype=p.dtype))
    except RuntimeError:
        if not vanished:
            vanished.append(_next_layer(model, last["name"]))
    finally:
        model._checking = False
        _size_checks -= 1
        restore()
        for h in handles:
            h.remove()
    return vanished[0] if vanished else None


def _next_layer(model: nn.Module, after: str) -> str:
    names = [n for n, m in model.named_modules() if n and not list(m.children())]
    if after in names and names.index(after) + 1 < len(names):
        return names[names.index(after) + 1]
    return after


def check_input_size(model: RFNet, size: int | tuple[int, int]) -> None:
    """Raise :class:`InputTooSmallError` if ``size`` (H, W) vanishes somewhere in ``model``."""
    if isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    if size in model._valid_sizes:
        return
    layer = _dry_run(model, size)
    if layer is None:
        model._valid_sizes.add(size)
        return
    smallest = _smallest_valid_size(model, min(size))
    hint = f"the smallest square input that works is {smallest}x{smallest}" if smallest else ""
    raise InputTooSmallError(
        f"{model.pool_spec.describe()} shrinks a {size[0]}x{size[1]} input to nothing at "
        f"layer '{layer}' of {type(model).__name__}; use a lower pool level or a larger input "
        f"(data.image_size). {hint}".strip()
    )


def _smallest_valid_size(model: RFNet, start: int, limit: int = 4096) -> int | None:
    hi = max(start, 1)
    while _dry_run(model, (hi, hi)) is not None:
        hi *= 2
        if hi > limit:
            return None
    lo = max(start, 1)
    while lo < hi:
        mid = (lo + hi) // 2
        if _dry_run(model, (mid, mid)) is None:
            hi = mid
        else:
            lo = mid + 1
    return hi


def scaled(channels: int, width: float) -> int:
    """Channel count scaled by the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))
