"""Moving a model's weights along directions in place, and putting them back exactly.

A slice evaluates the loss at thousands of points ``w0 + sum_i c_i d_i``; rebuilding or
copying the model per point costs more than the evaluation. :class:`WeightShift` keeps one
copy of the original parameters (those the directions move) and buffers, writes each point in
place as ``w0`` plus the combination (never by accumulating steps, so no drift), and on exit
copies the originals back: the weights afterwards are bit-identical.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from landscape.geometry.directions import check_direction


class WeightShift:
    """``with WeightShift(model, [d1, d2]) as shift: shift.set((a, b))`` puts the parameters
    at ``w0 + a d1 + b d2``; leaving the block restores every moved parameter and every buffer
    (BatchNorm statistics recomputed at a point) exactly."""

    def __init__(self, model: nn.Module, directions: Sequence[Mapping[str, Tensor]]) -> None:
        if not directions:
            raise ValueError("directions must hold at least one direction")
        for d in directions:
            check_direction(model, d)
        self.model = model
        self.directions = [dict(d) for d in directions]
        self.names = list(dict.fromkeys(n for d in self.directions for n in d))
        self._params = dict(model.named_parameters())
        self._w0: dict[str, Tensor] = {}
        self._buffers: dict[str, Tensor] = {}

    def __enter__(self) -> WeightShift:
        self._w0 = {n: self._params[n].detach().clone() for n in self.names}
        self._buffers = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        return self

    @torch.no_grad()
    def set(self, coords: Sequence[float]) -> None:
        """Parameters at ``w0 + sum_i coords[i] * directions[i]``."""
        if len(coords) != len(self.directions):
            raise ValueError(f"expected {len(self.directions)} coordinates, got {len(coords)}")
        for n in self.names:
            p = self._params[n]
            p.copy_(self._w0[n])
            for c, d in zip(coords, self.directions):
                if n in d and c != 0:
                    p.add_(d[n].to(p), alpha=float(c))

    @torch.no_grad()
    def __exit__(self, *exc: object) -> None:
        for n in self.names:
            self._params[n].copy_(self._w0[n])
        buffers = dict(self.model.named_buffers())
        for n, b in self._buffers.items():
            buffers[n].copy_(b)
