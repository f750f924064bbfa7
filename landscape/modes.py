"""Saving and restoring train/eval flags module by module.

``model.train(flag)`` sets every submodule to the root's flag and so loses mixed states (e.g.
BatchNorm frozen in eval inside a training model); everything that switches a caller's model
to another mode restores it through :func:`snapshot_modes`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from torch import nn


def snapshot_modes(model: nn.Module) -> Callable[[], None]:
    """Record every module's ``training`` flag; the returned function restores them."""
    flags = [(m, m.training) for m in model.modules()]

    def restore() -> None:
        for m, flag in flags:
            m.training = flag

    return restore


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore every submodule's own flag on exit."""
    restore = snapshot_modes(model)
    try:
        model.eval()
        yield model
    finally:
        restore()
