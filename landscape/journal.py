"""Saved progress of a long computation, so that one stopped on the way (a preempted job, a
time limit) goes on from where it was instead of starting again.

The Hessian computations of :mod:`landscape.hessian.spectrum` and the linear probes of
:func:`landscape.probes.layer_probes` take ``journal=``: anything with ``get(key) -> dict |
None`` and ``put(key, state)`` (:class:`Journal`). Each saves its state under its own keys as
it goes (the paper's Lanczos run: every new basis vector and the tridiagonal so far; SLQ: every
finished run; Hutchinson: every sample; top-k: its last restart and the finished result;
probes: every layer's) and, given the journal again, takes it up: the result equals an
uninterrupted run's, bit for bit on a deterministic computation. The geometry's computations
do the same point by point (a loss slice, :func:`landscape.geometry.loss_slice`; a linear
path, :func:`landscape.geometry.linear_path`), and a stage keeps any finished piece with
:func:`kept`. A saved state records the computation's parameters (sizes, seeds,
the start vector's digest): one saved by another computation is ignored and overwritten. It
does not record the operator or the data: use one journal per operator and data (the stages
key their folders by the network's digest and the stage's settings). States hold tensors and
plain Python values only (``torch.load(weights_only=True)`` reads them). :class:`MemoryJournal`
keeps them in a dict; the pipeline's stages keep them in the unit's scratch folder
(:class:`landscape.stages.scratch.FolderJournal`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping, Optional, Protocol

import torch


class Journal(Protocol):
    def get(self, key: str) -> Optional[dict[str, Any]]:
        """The state saved under ``key``, or None."""

    def put(self, key: str, state: dict[str, Any]) -> None:
        """Save ``state`` under ``key`` (replacing an earlier one)."""


class MemoryJournal:
    """A :class:`Journal` in memory: pass the same one again to go on after an exception."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> Optional[dict[str, Any]]:
        return self.states.get(key)

    def put(self, key: str, state: dict[str, Any]) -> None:
        self.states[key] = state


def saved(journal: Optional[Journal], key: str, params: dict[str, Any]
          ) -> Optional[dict[str, Any]]:
    """The state under ``key`` if it was saved by a computation with these ``params``."""
    if journal is None:
        return None
    state = journal.get(key)
    return state if state is not None and state.get("params") == params else None


def kept(journal: Optional[Journal], key: str, params: dict[str, Any],
         compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()`` (a dict of tensors and plain values) done once for these ``params``: the
    state saved under ``key`` when there is one, else computed now and saved."""
    state = saved(journal, key, params)
    if state is None:
        state = {"params": params, **compute()}
        if journal is not None:
            journal.put(key, state)
    return {k: v for k, v in state.items() if k != "params"}


def state_digest(prefix: str, groups: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """sha256 of ``prefix`` and every tensor of ``groups`` (group, name, dtype, shape, bytes;
    names in sorted order): what identifies a network a unit starts from, or a start vector
    (``{"start": {"v": v}}``)."""
    h = hashlib.sha256(prefix.encode())
    for group, tensors in groups.items():
        for name in sorted(tensors):
            t = tensors[name].detach().to("cpu").contiguous()
            h.update(f"{group}:{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
