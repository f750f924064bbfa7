"""Adapters between the pipeline (config, checkpoints, rows) and the pure metric modules."""

from __future__ import annotations

from typing import Sequence

CHECKPOINTS = ("init", "final")  # the weights before the first step, and after training


def check_checkpoints(group: str, checkpoints: Sequence[str]) -> None:
    """``<group>.checkpoints`` must be a non-empty subset of :data:`CHECKPOINTS`."""
    if not checkpoints or any(c not in CHECKPOINTS for c in checkpoints):
        raise ValueError(f"{group}.checkpoints must be a non-empty subset of {CHECKPOINTS}, "
                         f"got {list(checkpoints)}")
