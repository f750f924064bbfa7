"""Exact selection: turn importance scores into keep-masks that prune exactly round(rate * N).

The pruned set is the k lowest scores, ties broken by position: order the prunable weights by
(score, flat index), where the flat index runs over the tensors in the order of the ``scores``
dict and, inside a tensor, in row-major order. With ``scope="global"`` one k is chosen over all
N prunable weights; with ``scope="layerwise"`` each tensor l loses round(rate * n_l) of its own.
``round`` is Python's (halves to even).

Cost: one O(N) ``numpy.partition`` for the threshold value, one comparison pass for the masks,
and a scan for tied entries only when the threshold value occurs more than once. The work is
done in numpy on host memory (zero-copy for CPU tensors): on 20M scores its SIMD partition is
several times faster than ``torch.kthvalue`` or ``torch.sort``, and its single-threaded passes
do not slow down when the CPU is shared (torch's multi-threaded ones do). Masks are returned
as torch tensors on each score tensor's device.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

SCOPES = ("global", "layerwise")


class EmptyLayerWarning(UserWarning):
    """A layer had every one of its prunable weights pruned."""


def check_rate(rate: float) -> float:
    """Validate a pruning rate: a real number in [0, 1)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1) (the fraction of weights pruned), got {rate}")
    return float(rate)


def select_masks(
    scores: Mapping[str, Tensor], rate: float, scope: str = "global"
) -> dict[str, Tensor]:
    """Keep-masks (``True`` = kept) pruning exactly the ``round(rate * N)`` lowest scores.

    ``scores`` maps parameter names to real-valued tensors (higher = more important); each mask
    has its tensor's shape and device. A layer left with no weights triggers an
    :class:`EmptyLayerWarning` naming it (see also ``SparsityReport.empty_layers``).
    """
    rate = check_rate(rate)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    if not scores:
        raise ValueError("scores is empty: there is nothing to prune")
    names = list(scores)
    arrays = [_host_array(name, scores[name]) for name in names]

    if scope == "global":
        keep = _keep_all_but_lowest(arrays, round(rate * sum(a.size for a in arrays)))
    else:
        keep = [_keep_all_but_lowest([a], round(rate * a.size))[0] for a in arrays]

    empty = [n for n, m in zip(names, keep) if m.size > 0 and not m.any()]
    if empty:
        warnings.warn(
            f"pruning at rate {rate} ({scope}) removes every weight of layer(s) "
            f"{', '.join(empty)}; their outputs no longer depend on their inputs",
            EmptyLayerWarning,
            stacklevel=2,
        )
    return {
        n: torch.from_numpy(m).view(scores[n].shape).to(scores[n].device)
        for n, m in zip(names, keep)
    }


def _host_array(name: str, s: Tensor) -> np.ndarray:
    """The scores of one tensor as a flat numpy array (a view for contiguous CPU tensors)."""
    if not isinstance(s, Tensor):
        raise TypeError(f"scores['{name}'] must be a torch.Tensor, got {type(s).__name__}")
    if s.dtype == torch.bool or s.is_complex():
        raise TypeError(f"scores['{name}'] must be real-valued, got dtype {s.dtype}")
    flat = s.detach().reshape(-1).cpu()
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        flat = flat.float()
    a = flat.numpy()
    # A finite sum rules NaN out in one cheap pass; otherwise look (inf scores are allowed).
    if a.dtype.kind == "f" and not np.isfinite(a.sum()) and np.isnan(a).any():
        raise ValueError(f"scores['{name}'] contains NaN; a criterion must return real scores")
    return a


def _keep_all_but_lowest(arrays: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Keep-masks over ``arrays`` that drop the k lowest entries in (score, position) order."""
    if k == 0:
        return [np.ones(a.shape, dtype=bool) for a in arrays]
    values = np.concatenate(arrays)  # a fresh array, so it can be partitioned in place
    values.partition(k - 1)
    t = values[k - 1]  # the k-th smallest score
    del values
    keep = [a > t for a in arrays]
    # Every entry equal to t was dropped; the last `short` of them in flat order stay.
    short = sum(a.size for a in arrays) - k - sum(int(np.count_nonzero(m)) for m in keep)
    for a, m in zip(reversed(arrays), reversed(keep)):
        if short == 0:
            break
        at_t = np.flatnonzero(a == t)
        restore = at_t[max(0, at_t.size - short):]
        m[restore] = True
        short -= restore.size
    return keep
