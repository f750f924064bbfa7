"""Shared base of every architecture: the RF pool spec and an explicit input-size check.

:func:`check_input_size` (called by ``create_model(..., input_size=...)`` at build time)
reports a pool that shrinks the feature map to nothing, naming the pool setting, the input
size, the layer where the map vanished and the smallest square input that works. A forward
pass does no check of its own: a too-small input fails there with torch's RuntimeError.
"""

from __future__ import annotations

import torch
from torch import nn

from landscape.fixed_size import built_for
from landscape.models.rf_pool import PoolSpec
from landscape.modes import snapshot_modes


class InputTooSmallError(ValueError):
    """The input is too small for the network's pooling (the RF pool included), or of a size
    the network's own code refuses (a ViT's fixed input size)."""


class RFNet(nn.Module):
    """Base class: holds ``pool_spec`` and ``in_channels`` (see :func:`check_input_size`)."""

    def __init__(self, pool_spec: PoolSpec, in_channels: int) -> None:
        super().__init__()
        self.pool_spec = pool_spec
        self.in_channels = in_channels
        self.spec = None  # the ModelSpec knobs, set by build_model


def _dry_run(model: RFNet, size: tuple[int, int], why: list[str] | None = None) -> str | None:
    """Forward a zero image in eval mode (every module's mode restored after); return the
    name of the first leaf layer whose output vanished, or None if the forward succeeds.
    A RuntimeError's first line is appended to ``why``."""
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
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, model.in_channels, *size, device=p.device, dtype=p.dtype))
    except RuntimeError as e:
        if why is not None:
            why.append(str(e).splitlines()[0] if str(e) else "RuntimeError")
        if not vanished:
            vanished.append(_next_layer(model, last["name"]))
    except AssertionError as e:  # the model checks its input size itself
        name = getattr(model, "source_name", type(model).__name__)
        reason = str(e).strip() or "an assertion in its forward failed"
        built = built_for(model)
        built = f"; it is built for {built}x{built} inputs" if built else ""
        raise InputTooSmallError(f"{name} does not run on a {size[0]}x{size[1]} input "
                                 f"({reason}{built}); set data.image_size to a size it accepts"
                                 ) from None
    finally:
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
    """Raise :class:`InputTooSmallError` if a ``size`` (H, W) input vanishes somewhere in
    ``model``: one dry forward of a zero image (it fires the model's forward hooks), plus a
    binary search for the smallest working square size when it fails. Modes are restored."""
    if isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    why: list[str] = []
    layer = _dry_run(model, size, why)
    if layer is None:
        return
    smallest = _smallest_valid_size(model, min(size))
    if smallest is None and why:  # fails at every size: not a matter of size
        where = "before its first layer" if layer == "<input>" else f"near layer '{layer}'"
        raise ValueError(
            f"{getattr(model, 'source_name', type(model).__name__)} fails on a "
            f"{size[0]}x{size[1]} input {where} and at every larger square size "
            f"up to 4096 px, so not for its size ({model.in_channels} input channel(s)): "
            f"{why[0]}")
    hint = f"the smallest square input that works is {smallest}x{smallest}" if smallest else ""
    knobs = model.spec.label() if getattr(model, "spec", None) is not None else ""
    what = (f"{model.pool_spec.describe()} with the knobs {knobs}" if knobs
            else model.pool_spec.describe())
    fix = "lower strides, a lower pool level" if knobs else "a lower pool level"
    raise InputTooSmallError(
        f"{what} shrinks a {size[0]}x{size[1]} input to nothing at layer '{layer}' of "
        f"{getattr(model, 'source_name', type(model).__name__)}; use {fix} or a larger input "
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
