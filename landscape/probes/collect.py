"""One forward pass per batch for everything the probes and saturation need from every layer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from landscape.activations import select_on_batches
from landscape.probes.probes import _check_size, _collect, probe_features
from landscape.probes.saturation import CovarianceAccumulator


@dataclass(frozen=True, eq=False)
class LayerData:
    """What :func:`collect_layers` saw: ``layers`` in execution order; ``features[name]``: the
    (n, features) float32 probe features (:func:`~landscape.probes.probe_features`);
    ``labels``: (n,); ``covariances[name]``: the streamed float64 covariance of the layer's
    output (empty unless asked for)."""

    layers: list[str]
    features: dict[str, np.ndarray]
    labels: np.ndarray
    covariances: dict[str, CovarianceAccumulator]


def collect_layers(
    model: nn.Module,
    batches: Iterable[Sequence[Tensor]],
    *,
    layers: Sequence[str] | None = None,
    size: int | None = 4,
    pool_up: bool = False,
    covariance: bool = False,
    device: str | torch.device = "cpu",
) -> LayerData:
    """Probe features (and, with ``covariance``, the running covariance) of every selected
    layer from ONE forward per (inputs, labels) batch: hooks feed both, no second pass per layer
    or per quantity. Eval mode and no grad; the caller's modes are restored. ``layers``: glob
    patterns (None: every Conv2d and Linear); ``size`` / ``pool_up``: as in
    :func:`~landscape.probes.probe_features`."""
    _check_size(size)
    names, batches = select_on_batches(model, layers, batches, device)
    accs = {n: CovarianceAccumulator(n) for n in names} if covariance else {}

    def features(name: str, out: Tensor) -> Tensor:
        if covariance:
            accs[name].update(out)
        return probe_features(out, size, layer=name, pool_up=pool_up)

    feats, labels = _collect(model, batches, names, features, device)
    return LayerData(layers=list(feats), features=feats, labels=labels,
                     covariances={n: accs[n] for n in feats} if covariance else {})
