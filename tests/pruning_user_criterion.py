"""A pruning criterion defined outside the library, as a user would in their own module.

Importing this module registers it; nothing in ``landscape`` is edited.
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from landscape.pruning import register_criterion


@register_criterion("test_largest_first")
def largest_first(
    params: Mapping[str, Tensor], *, model: nn.Module, data: object, offset: float = 0.0
) -> dict[str, Tensor]:
    """-|w| + offset: prunes the LARGEST weights first (the opposite of magnitude)."""
    return {name: offset - p.detach().abs() for name, p in params.items()}
