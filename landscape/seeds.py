"""Named random streams: every seed a run derives, with its purpose in the name, in one place.

A stream owns a range of integer tags ``[base, base + span)``; the seed of draw ``index`` of a
stream is ``derive_seed(run_seed, base + index)``. The ranges are checked to be disjoint when
this module is imported, so two purposes can never share a seed (before, structured pruning used
tag 31, which is also training epoch 31). The tags of the streams that existed before they were
named are kept, so results made earlier stay reproducible; a run asking for more draws than its
stream owns (e.g. more than 998 training epochs) is refused with the field to change.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Stream:
    """A named range of tags: draw ``index`` in ``[0, span)`` uses tag ``base + index``."""

    name: str
    base: int
    span: int = 1
    field: str = ""  # the config field that sets the number of draws, for error messages

    def tag(self, index: int = 0) -> int:
        if not 0 <= index < self.span:
            where = f" ({self.field})" if self.field else ""
            raise ValueError(f"seed stream '{self.name}' has {self.span} draws; draw {index} "
                             f"was asked for{where}. Use at most {self.span}.")
        return self.base + index


INIT = Stream("init", 0)  # the model's initial weights (epoch 0)
TRAIN_EPOCH = Stream("train_epoch", 1, 998, "train.epochs")  # index = epoch - 1
FINETUNE = Stream("finetune", 999)  # the fine-tuning process (torch's global RNG)
FINETUNE_EPOCH = Stream("finetune_epoch", 1000, 3000, "prune.finetune_epochs")  # data order
HESSIAN = Stream("hessian", 4242)  # start vectors (density: +1, trace: +2 on the derived seed)
HESSIAN_DATA = Stream("hessian_data", 4243)  # augmentation and order of its evaluation set
STRUCTURED_PRUNE = Stream("structured_prune", 5000)  # torch-pruning's random choices
IMPORTANCE = Stream("importance", 7919)  # random inputs of the projected-gradient maps
SLICE = Stream("slice", 8000, 2)  # the random directions of a loss slice (plane: draws 0, 1)
PRUNED_HESSIAN = Stream("pruned_hessian", 9000)  # start vectors of the pruned nets' Hessians
IMP_CONTROL = Stream("imp_control", 10000, 1000, "imp.rounds")  # random masks / inits per round
PRUNE_DATA = Stream("prune_data", 11000)  # the class-balanced images of prune.data_per_class
PRUNE_AUGMENT = Stream("prune_augment", 11001)  # their augmentation (prune.data_augment)

STREAMS = (INIT, TRAIN_EPOCH, FINETUNE, FINETUNE_EPOCH, HESSIAN, HESSIAN_DATA, STRUCTURED_PRUNE,
           IMPORTANCE, SLICE, PRUNED_HESSIAN, IMP_CONTROL, PRUNE_DATA,
           PRUNE_AUGMENT)


def _check_disjoint(streams: tuple[Stream, ...]) -> None:
    spans = sorted((s.base, s.base + s.span, s.name) for s in streams)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise AssertionError(f"seed streams '{a}' and '{b}' overlap")


_check_disjoint(STREAMS)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def stream_seed(seed: int, stream: Stream, index: int = 0) -> int:
    """The seed of draw ``index`` of ``stream`` for a run with seed ``seed``."""
    return derive_seed(seed, stream.tag(index))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
