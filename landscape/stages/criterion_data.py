"""The training images a data-based pruning criterion reads (SNIP, GraSP, OBD, ...):
``prune.data_batches`` batches of the first training images (the default), or
``prune.data_per_class`` images of every class (GraSP's and SNIP's reference code sample a
class-balanced set: GraSP 10 per class on CIFAR-10), drawn from the run's seed; without
augmentation, or with ``prune.data_augment`` one draw of the training augmentation (as those
reference codes, which sample from their training loader), in batches of the training batch
size."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import Subset

from landscape.pruning import import_criteria, reads_data
from landscape.seeds import PRUNE_AUGMENT, PRUNE_DATA, stream_seed
from landscape.stages.base import RunContext
from landscape.stages.batches import eval_split, evaluation_batches, seeded_batches


# The built-in criteria registered ``data_free``: their unit names leave the data settings
# out. A name is computed without the registry (``landscape-status`` names units without
# importing a user's criteria, ``prune.imports``), so a user's data-free criterion is still
# named with them (its notes and batches follow its declaration).
NAMED_DATA_FREE = ("magnitude", "random", "synflow")


def named_with_data(cfg: Any) -> bool:
    """Whether the data settings of ``cfg`` (a PruneConfig) name its prune units."""
    return not cfg.structured and cfg.criterion not in NAMED_DATA_FREE


def needs_data(cfg: Any) -> bool:
    """The pruning criterion of ``cfg`` (a PruneConfig) reads training images: not structured
    pruning, nor a criterion registered ``data_free`` (magnitude, random, synflow), whose
    units' notes leave the data settings out."""
    import_criteria(cfg.imports)  # a user's criterion is known before its declaration is read
    return not cfg.structured and reads_data(cfg.criterion)


def check_data_per_class(cfg: Any) -> None:
    """``prune.data_per_class``: None, or an integer >= 1; ``prune.data_augment``: a bool
    (both unused by a criterion that reads no data, as ``prune.data_batches``: a sweep of
    criteria can set them for those that do)."""
    k = cfg.data_per_class
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"prune.data_per_class must be an integer >= 1 or null, got {k!r}")
    if not isinstance(cfg.data_augment, bool):
        raise ValueError(f"prune.data_augment must be true or false, got {cfg.data_augment!r}")


def data_note(cfg: Any) -> str:
    """What the criterion read, for the unit's note ("" for a criterion without data)."""
    if not needs_data(cfg):
        return ""
    note = (f"; data_per_class={cfg.data_per_class}" if cfg.data_per_class is not None
            else f"; data_batches={cfg.data_batches}")
    return note + ("; data_augment=True" if cfg.data_augment else "")


def criterion_batches(ctx: RunContext, cfg: Any) -> Iterable:
    """The batches the criterion of ``cfg`` reads, on the device; for a data-free criterion
    the first training batch, built when first read (synflow reads its shape; magnitude
    nothing)."""
    if not needs_data(cfg):
        return FirstBatchOnRead(ctx)
    if cfg.data_per_class is None and not cfg.data_augment:
        return first_batches(ctx, cfg.data_batches)
    split = eval_split(ctx, "train_eval")
    if cfg.data_per_class is None:
        idx = np.arange(min(cfg.data_batches * ctx.train.batch_size, len(ctx.data.train)))
    else:
        idx = balanced_indices(split_labels(split), cfg.data_per_class,
                               stream_seed(ctx.identity.seed, PRUNE_DATA))
    if cfg.data_augment:  # the training split's own transform, drawn once from the run's seed
        ds = Subset(ctx.data.train, idx.tolist())
    else:
        ds = (split.subset(torch.as_tensor(idx)) if hasattr(split, "subset")
              else Subset(split, idx.tolist()))
    return seeded_batches(ctx, ds, ctx.train.batch_size,
                          stream_seed(ctx.identity.seed, PRUNE_AUGMENT))


class FirstBatchOnRead:
    """The first training batch (:func:`first_batches`), built on the first iteration and
    kept: what a data-free criterion gets, so none is built for one that never reads it."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx, self._batches = ctx, None

    def __iter__(self) -> Iterator:
        if self._batches is None:
            self._batches = first_batches(self._ctx, 1)
        return iter(self._batches)

    @property
    def built(self) -> bool:
        return self._batches is not None


def first_batches(ctx: RunContext, n: int) -> list:
    """The first ``n`` batches of training images (no augmentation) of the training batch
    size."""
    return evaluation_batches(ctx, n * ctx.train.batch_size, ctx.train.batch_size)


def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of each class present in ``labels``, each class's drawn without
    replacement from ``seed``, all of them in one random order (from ``seed``). A class with
    fewer images is an error naming the smallest and its count."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < per_class:
        short = int(np.argmin(counts))
        raise ValueError(f"prune.data_per_class={per_class}, but class {int(classes[short])} "
                         f"has {counts[short]} training images; use at most {counts[short]}")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
              for c in classes]
    out = np.concatenate(chosen)
    return out[rng.permutation(len(out))]


def split_labels(ds: Any) -> np.ndarray:
    """The labels of a training split without reading its images where it keeps them
    (``labels``, ``targets``, ``samples``; through a ``Subset``); else read item by item."""
    if isinstance(ds, Subset):
        return split_labels(ds.dataset)[np.asarray(ds.indices)]
    for name in ("labels", "targets"):
        if hasattr(ds, name):
            return torch.as_tensor(getattr(ds, name)).cpu().numpy()
    if hasattr(ds, "samples"):
        return np.asarray([t for _, t in ds.samples])
    return np.asarray([int(ds[i][1]) for i in range(len(ds))])
