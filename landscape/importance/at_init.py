"""Importance maps at initialisation by architecture name: the paper's Tables 3 and 4.

This module builds models by name (the probe layer of the paper's procedure is a fact of each
architecture); the map computations themselves (:mod:`.paper`, :mod:`.maps`) take a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from landscape.importance.maps import ImportanceMaps, projected_gradient_maps
from landscape.importance.paper import paper_importance
from landscape.models import build_model, resolve_pool
from landscape.seeds import derive_seed

PROTOCOLS = ("paper", "default")


@dataclass(frozen=True)
class PaperProbe:
    """Where the paper's code puts the unit gradients (``layer``) and which leaf modules it
    leaves nonlinear (``keep``: the released ResNet applies its stem ReLU as a function)."""

    layer: str
    keep: tuple[str, ...] = ()


PAPER_PROBES = {
    "vgg19": PaperProbe("features"),
    "resnet18": PaperProbe("layer4", ("relu",)),
    "resnet50": PaperProbe("layer4", ("relu",)),
}


def paper_probe(arch: str) -> PaperProbe:
    """The paper's probe of ``arch``; an error names the architectures it is defined for."""
    if arch not in PAPER_PROBES:
        raise ValueError(f"the paper's importance procedure is defined for "
                         f"{', '.join(sorted(PAPER_PROBES))} (the released code's probe "
                         f"layers), not {arch!r}; use the default protocol for it")
    return PAPER_PROBES[arch]


def importance_at_init(arch: str, pool_level: int, *, protocol: str = "paper",
                       input_size: int = 64, n_inits: int = 50, num_classes: int = 10,
                       width: float = 1.0, seed: int = 0, in_channels: int = 3,
                       device: str | torch.device = "cpu", progress: bool = False
                       ) -> ImportanceMaps:
    """Projected-gradient maps of ``n_inits`` fresh initialisations of ``arch`` at RF pool
    ``pool_level`` (initialisation ``i`` seeded by ``derive_seed(seed, i)``).

    ``protocol="paper"``: the released code's procedure (:mod:`landscape.importance.paper`),
    the one behind the paper's Tables 3 and 4 (64 x 64 input, 50 initialisations).
    ``protocol="default"``: our measurement, one N(0, 1) input per initialisation through
    the model as it is, at the last conv layer, summed over input channels
    (:func:`~landscape.importance.maps.projected_gradient_maps`). Returns the per-init maxima
    (``maxima``), their mean and population std (``max_mean``, ``max_std``) and the mean map.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    pool = resolve_pool(pool_level)
    with torch.device("meta"):  # checks the input size once, without memory
        build_model(arch, pool, num_classes=num_classes, in_channels=in_channels, width=width,
                    input_size=input_size)

    def build() -> torch.nn.Module:
        return build_model(arch, pool, num_classes=num_classes, in_channels=in_channels,
                           width=width, image_size=input_size)

    if protocol == "paper":
        probe = paper_probe(arch)
        return paper_importance(build, layer=probe.layer, keep=probe.keep, n_inits=n_inits,
                                input_size=input_size, seed=seed, device=device,
                                progress=progress)
    maps, last = [], None
    for i in range(n_inits):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, i))
            model = build().to(device)
        last = projected_gradient_maps(model, input_size=input_size, n_samples=1,
                                       mode="random_input", seed=derive_seed(seed, i),
                                       device=device, in_channels=in_channels)
        maps.append(last.mean_map)
    assert last is not None
    return ImportanceMaps.from_maps(np.stack(maps), mode=last.mode, layer=last.layer,
                                    centre=last.centre, input_size=input_size, seed=seed)
