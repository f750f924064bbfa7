"""The paper's projected-gradient procedure (its Tables 3 and 4), as its released code does it.

For one model (``easy_receptive_fields_pytorch/receptivefield.py`` of Elluito/sparse_ensemble;
docs/paper-protocol.md):

* a linearised copy in eval mode: ReLU and BatchNorm pass the gradient through unchanged,
  max-pool back-propagates as the average-pool of the same window (padding counted), except
  the leaf modules named in ``keep`` (the released ResNet applies its stem ReLU as a function,
  which the code's hooks do not see, so that ReLU still gates the gradient);
* the input ``3 * ones(1, C, S, S)``;
* a unit gradient at ``(ceil(h / 2) - 1, ceil(w / 2) - 1)`` (0-based) of every channel of the
  output of ``layer`` (VGG: ``features``; ResNet: ``layer4``, the residual sum after the last
  block);
* the map is ``|d / d x[0, 0]|``: the gradient of input channel 0 only, in |d out / d pixel|.

The tables summarise such maps over fresh random initialisations (50 in the paper): the mean
and std of the per-initialisation maxima (:func:`paper_importance`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from landscape.activations import ActivationCapture, check_on_device
from landscape.device import progress_enabled
from landscape.importance.maps import ImportanceMaps, linearised_copy
from landscape.seeds import derive_seed

INPUT_VALUE = 3.0  # the released code's input: torch.ones(...) * 3
CENTRE_CONVENTION = "out[0, :, ceil(h/2) - 1, ceil(w/2) - 1] (0-based), every channel"
AGGREGATION = (
    "per initialisation: |input gradient| of input channel 0; mean_map: mean over "
    "initialisations; maxima: per-initialisation max of the map; max_std: population std"
)
BN_MODE = "identity (straight-through gradient), eval mode"


def paper_centre(h: int, w: int) -> tuple[int, int]:
    """The released code's centre of an h x w map: ``(ceil(h/2) - 1, ceil(w/2) - 1)``."""
    return math.ceil(h / 2) - 1, math.ceil(w / 2) - 1


def paper_projection(model: nn.Module, *, layer: str, input_size: int,
                     keep: tuple[str, ...] = (), in_channels: int | None = None,
                     device: str | torch.device = "cpu") -> tuple[np.ndarray, tuple[int, int]]:
    """One (input_size, input_size) float64 map of ``model`` by the paper's procedure (see
    the module docstring) and the centre it used. ``model`` (on ``device``) is untouched."""
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be an integer >= 1, got {input_size!r}")
    if layer not in dict(model.named_modules()):
        raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}")
    check_on_device(model, device)
    channels = in_channels if in_channels is not None else getattr(model, "in_channels", 3)
    net = linearised_copy(model, keep=keep)
    dtype = next(net.parameters()).dtype
    x = torch.full((1, channels, input_size, input_size), INPUT_VALUE, dtype=dtype,
                   device=device, requires_grad=True)
    centres: list[tuple[torch.Tensor, tuple[int, int]]] = []

    def on_output(_name: str, out: torch.Tensor) -> None:
        if out.dim() != 4:
            raise ValueError(f"layer {layer!r} must output (n, C, h, w), got {tuple(out.shape)}")
        r, c = paper_centre(out.shape[-2], out.shape[-1])
        centres.append((out[0, :, r, c].clone(), (r, c)))  # clone: in-place ops may follow

    with torch.enable_grad(), ActivationCapture(net, [layer], on_output) as capture:
        capture.run(x)
    values, centre = centres[0]
    (grad,) = torch.autograd.grad(values.sum(), x)
    return grad[0, 0].abs().to(torch.float64).cpu().numpy(), centre


def paper_importance(build: Callable[[], nn.Module], *, layer: str, n_inits: int = 50,
                     input_size: int = 64, keep: tuple[str, ...] = (), seed: int = 0,
                     device: str | torch.device = "cpu", progress: bool = False
                     ) -> ImportanceMaps:
    """The paper's maps over ``n_inits`` fresh initialisations: ``build()`` is called under
    ``torch.manual_seed(derive_seed(seed, i))`` for initialisation ``i`` (torch's global RNG
    is restored after), moved to ``device`` and projected by :func:`paper_projection`."""
    if isinstance(n_inits, bool) or not isinstance(n_inits, int) or n_inits < 1:
        raise ValueError(f"n_inits must be an integer >= 1, got {n_inits!r}")
    maps, centre = [], (0, 0)
    for i in tqdm(range(n_inits), desc="paper importance", leave=False,
                  disable=not progress_enabled(progress)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, i))
            model = build()
        m, centre = paper_projection(model.to(device), layer=layer, input_size=input_size,
                                     keep=keep, device=device)
        maps.append(m)
    return paper_maps(np.stack(maps), layer=layer, centre=centre, input_size=input_size,
                      seed=seed)


def paper_maps(maps: np.ndarray, *, layer: str, centre: tuple[int, int], input_size: int,
               seed: int) -> ImportanceMaps:
    """:class:`ImportanceMaps` from (n, H, W) maps of :func:`paper_projection`."""
    return ImportanceMaps.from_maps(
        maps, mode="paper", layer=layer, centre=centre, input_size=input_size, seed=seed,
        centre_convention=CENTRE_CONVENTION, aggregation=AGGREGATION, bn_mode=BN_MODE)
