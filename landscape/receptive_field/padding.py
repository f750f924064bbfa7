"""Weights that only ever multiply padding: at a given input size, a tap of a convolution whose
every output position reads it from the zero padding around the map, never from the map. Such
a weight has no path to the input (it multiplies zeros at every position of every image):
its gradient is exactly zero, every data-driven pruning score of it is zero, and removing it
changes nothing. A receptive field much larger than the input makes many of them: VGG19 with
the paper's pool at level 2 on 16 px digits is 1 x 1 from its 9th conv on, where 8 of the 9
taps of each 3x3 kernel read padding only (78.4 % of its conv and linear weights;
docs/pruning-criteria.md).

Per axis, tap i of a convolution of kernel k, stride s, dilation d and left padding p on a map
of n positions reads position ``t s - p + i d`` for output t; it is padding-only when that is
outside ``[0, n)`` for every output t. A 2-D tap is padding-only when it is so along either
axis. Only ``nn.Conv2d`` modules with zero padding (``padding_mode="zeros"``, integer or
``"same"``, and timm's ``Conv2dSame``, which pads in its forward as TensorFlow's "SAME") are
read, on a meta-device forward pass of one image (shapes only); a module called several
times counts a tap only if it is padding-only in every call; padding added by an explicit
``F.pad`` before a conv is part of that conv's input and not seen as padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from landscape.receptive_field.cost import meta_input


def padding_only_taps(size: int, kernel: int, stride: int = 1, padding: int = 0,
                      dilation: int = 1, padding_right: int | None = None) -> list[bool]:
    """Per tap of one axis: True when every output position reads it from the padding
    (``padding`` on the left, ``padding_right`` on the right, default the same)."""
    right = padding if padding_right is None else padding_right
    outputs = (size + padding + right - dilation * (kernel - 1) - 1) // stride + 1
    if outputs < 1:
        raise ValueError(f"a map of {size} positions is smaller than the kernel's span "
                         f"{dilation * (kernel - 1) + 1} with padding {padding}/{right}")
    return [all(not 0 <= t * stride - padding + i * dilation < size for t in range(outputs))
            for i in range(kernel)]


@dataclass(frozen=True)
class PaddingOnly:
    """One conv layer: its ``weights`` and how many of them read padding only (``dead``) at
    the input size it was measured at."""

    layer: str
    weights: int
    dead: int


def _axis_padding(conv: nn.Conv2d, axis: int, size: int) -> tuple[int, int]:
    """(left, right) zero padding of ``conv`` along ``axis`` for an input of ``size``."""
    k, s, d = conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
    if type(conv).__name__ == "Conv2dSame":  # timm's TensorFlow "SAME": padded in forward
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        return total // 2, total - total // 2
    if conv.padding == "same":
        total = conv.dilation[axis] * (conv.kernel_size[axis] - 1)
        return total // 2, total - total // 2
    if conv.padding == "valid":
        return 0, 0
    return conv.padding[axis], conv.padding[axis]


def _dead_taps(conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """(kh, kw) bool: the taps of ``conv`` that read padding only on a ``size`` map."""
    axes = []
    for a in (0, 1):
        left, right = _axis_padding(conv, a, size[a])
        axes.append(torch.tensor(padding_only_taps(
            size[a], conv.kernel_size[a], conv.stride[a], left, conv.dilation[a], right)))
    return axes[0][:, None] | axes[1][None, :]


def padding_only_weights(model: nn.Module, input_size: int | tuple[int, int],
                         in_channels: int | None = None) -> list[PaddingOnly]:
    """Per ``nn.Conv2d`` of ``model`` (left unchanged) with zero padding, in call order, at one
    ``in_channels`` x ``input_size`` image (module docstring)."""
    meta, image = meta_input(model, input_size, in_channels)
    names = {m: n for n, m in meta.named_modules()}
    dead: dict[nn.Module, torch.Tensor] = {}

    def record(conv: nn.Module, args: tuple) -> None:
        taps = _dead_taps(conv, tuple(args[0].shape[-2:]))
        dead[conv] = taps & dead[conv] if conv in dead else taps

    convs = [m for m in meta.modules()
             if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros"]
    hooks = [m.register_forward_pre_hook(record) for m in convs]
    training = meta.training
    meta.eval()
    try:
        with torch.no_grad():
            meta(image)
    finally:
        meta.train(training)
        for hook in hooks:
            hook.remove()
    out = []
    for conv, taps in dead.items():
        per_tap = conv.out_channels * (conv.in_channels // conv.groups)
        out.append(PaddingOnly(names[conv], conv.weight.numel(), int(taps.sum()) * per_tap))
    return out


def conv_linear_weights(model: nn.Module) -> int:
    """The number of conv and linear weights of ``model`` (the default prunable set)."""
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))


def padding_only_share(model: nn.Module, input_size: int | tuple[int, int],
                       in_channels: int | None = None) -> float:
    """The share of ``model``'s conv and linear weights that only ever multiply padding at
    one image of ``input_size`` (:func:`padding_only_weights`)."""
    weights = conv_linear_weights(model)
    dead = sum(r.dead for r in padding_only_weights(model, input_size, in_channels))
    return dead / weights if weights else 0.0
