"""torchvision's classification models, built on the meta device for receptive-field analysis.

Built on ``torch.device("meta")``: parameters have shapes but no memory, so even
``regnet_y_128gf`` or ``vit_h_14`` costs nothing to build, and the RF analysis needs shapes only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torchvision
from torch import nn
from torchvision.models import regnet

# torchvision builds these with auxiliary classifiers / a weight init that the RF table does
# not need; the aux heads run in training mode only and are left out.
_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
           "inception_v3": {"aux_logits": False, "init_weights": False}}


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models.list_models``)."""
    return list(torchvision.models.list_models(module=torchvision.models))


@contextmanager
def _regnet_widths_on_cpu() -> Iterator[None]:
    """RegNet computes its stage widths with tensors and reads them back (``.tolist()``),
    which meta tensors cannot do: that computation runs on the CPU."""
    original = regnet.BlockParams.__dict__["from_init_params"]

    def from_init_params(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kwargs)

    regnet.BlockParams.from_init_params = classmethod(from_init_params)
    try:
        yield
    finally:
        regnet.BlockParams.from_init_params = original


def torchvision_model(name: str, *, device: str | torch.device = "meta") -> nn.Module:
    """torchvision classification model ``name`` without weights, in eval mode, on ``device``
    (meta by default). Raises ValueError naming the valid models for an unknown name."""
    names = torchvision_classifiers()
    if name not in names:
        raise ValueError(f"unknown torchvision classification model {name!r}; valid: "
                         f"{', '.join(names)}")
    with torch.device(device), _regnet_widths_on_cpu():
        model = torchvision.models.get_model(name, weights=None, **_KWARGS.get(name, {}))
    return model.eval()
