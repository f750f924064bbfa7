"""The input-size protocols of ``data.resize`` beyond a plain resize (issue 26, after "Size
Matters"): ``down_up`` (set C: the detail of ``down_size`` at the input size) and ``canvas``
(the image pasted on a larger black canvas: object size apart from image size).

Pure operations shared by the two data paths: the DataLoader path applies them per image
(:class:`DownUp` in the torchvision v2 pipeline, :class:`CanvasDataset` around a split), the
resident path (``landscape.data.resident``) to whole batches, with the same distributions:
canvas offsets uniform on ``[0, canvas - object]`` per axis, drawn per image and epoch on the
training split (torch's RNG here, the epoch's generator there) and fixed per image on the
evaluation splits (:func:`fixed_offsets`, the same table on both paths, so evaluation is
deterministic and identical).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

CANVAS_EVAL_SEED = 2026  # the generator of the fixed evaluation offsets (one table for all)


def down_up(x: Tensor, down: int, size: int) -> Tensor:
    """Bilinear (antialiased) resize of float images ``(..., C, H, W)`` to ``down`` x ``down``,
    then back up to ``size`` x ``size`` (torchvision's ``resize``, as the paper's set C)."""
    x = TF.resize(x, [down, down], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.resize(x, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


class DownUp(torch.nn.Module):
    """:func:`down_up` as a step of a v2 pipeline (float CHW tensors)."""

    def __init__(self, down: int, size: int) -> None:
        super().__init__()
        self.down, self.size = down, size

    def forward(self, x: Tensor) -> Tensor:
        return down_up(x, self.down, self.size)


def random_offsets(n: int, span: int, generator: torch.Generator | None = None) -> Tensor:
    """``(n, 2)`` int64 offsets ``(top, left)``, each uniform on ``[0, span]``."""
    return torch.randint(0, span + 1, (n, 2), generator=generator)


def fixed_offsets(n: int, span: int) -> Tensor:
    """The evaluation offsets of images ``0..n-1`` (``(n, 2)``, uniform on ``[0, span]``): the
    same for every run, split and data path (image ``i`` of a split always sits at row ``i``)."""
    return random_offsets(n, span, torch.Generator().manual_seed(CANVAS_EVAL_SEED))


def paste(x: Tensor, offsets: Tensor, canvas: int, fill: Tensor | float = 0.0) -> Tensor:
    """Images ``x`` (B, C, h, w) on a ``canvas`` x ``canvas`` background of ``fill`` (a
    scalar or a per-channel (C, 1, 1) tensor), image ``b`` at rows ``top_b..top_b+h-1`` and
    columns ``left_b..left_b+w-1`` (``offsets`` (B, 2)). One scatter for the whole batch."""
    B, C, h, w = x.shape
    out = x.new_empty(B, C, canvas, canvas)
    out[:] = fill
    dev = x.device
    offsets = offsets.to(dev)
    rows = offsets[:, 0, None] + torch.arange(h, device=dev)  # B, h
    cols = offsets[:, 1, None] + torch.arange(w, device=dev)  # B, w
    b = torch.arange(B, device=dev)[:, None, None]
    nhwc = out.permute(0, 2, 3, 1)  # a view: assignment writes ``out``
    nhwc[b, rows[:, :, None], cols[:, None, :]] = x.permute(0, 2, 3, 1)
    return out


class CanvasDataset(Dataset):
    """``dataset`` (normalised ``(C, s, s)`` images) pasted on a black canvas (0 before
    normalisation: ``(0 - mean) / std`` after) of side ``canvas``; at a uniform random offset
    drawn from torch's RNG at every access (``random``: the training split; seeded per epoch
    and worker by the training loop) or at the image's fixed offset (:func:`fixed_offsets`)."""

    def __init__(self, dataset: Dataset, canvas: int, size: int, mean: Sequence[float],
                 std: Sequence[float], *, random: bool) -> None:
        if canvas < size:
            raise ValueError(f"a canvas of {canvas} px cannot hold {size} px images")
        self.dataset, self.canvas, self.size, self.random = dataset, canvas, size, random
        self.mean, self.std = tuple(mean), tuple(std)
        self.fill = TF.normalize(torch.zeros(len(mean), 1, 1), list(mean), list(std))
        self.offsets = None if random else fixed_offsets(len(dataset), canvas - size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        off = (random_offsets(1, self.canvas - self.size) if self.random
               else self.offsets[i:i + 1])
        return paste(x[None], off, self.canvas, self.fill)[0], y
