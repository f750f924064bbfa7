"""The input size a model was built for, where its source fixes one at construction.

A timm or torchvision transformer whose token grid or position tables are sized when it is
built (:mod:`landscape.models.sources` builds it for the run's input size) carries that size
as the attribute :data:`BUILT_FOR`; :func:`built_for` reads it (through the ``net`` an
:class:`~landscape.models.external.ExternalNet` wraps). Its own module, so that the metric
code reading it (the receptive-field trace's default size) does not depend on the builders.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

BUILT_FOR = "landscape_img_size"  # attribute: the input size a model was built for


def built_for(model: nn.Module) -> Optional[int]:
    """The input size whose token grid / position tables ``model`` (or the source model it
    wraps as ``net``) was built for; None for a model that runs at any size."""
    return getattr(getattr(model, "net", model), BUILT_FOR, None)
