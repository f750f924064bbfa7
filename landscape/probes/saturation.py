"""Layer saturation (Richter et al. 2020, "Feature space saturation during training"; 2021,
"Size Matters"), matching the PyPI package ``delve`` 0.1.50.

Definitions, for one layer with D output dimensions:

* samples: a ``Linear`` output (N, D) gives N samples of D dimensions; a conv output
  (N, C, H, W) gives N*H*W samples of D = C dimensions, every spatial position of every
  image being one sample (delve's default ``conv_method="channelwise"``; its alternatives
  pool each map to one number, or flatten C*H*W dimensions, which is rarely full rank); a
  token sequence (N, L, D) (a transformer's Linear outputs, features last) gives N*L samples
  of D dimensions, every token one sample, as every position of a conv map.
* covariance: the population covariance ``Q = E[x x^T] - mu mu^T`` over all samples, i.e.
  normalised by the sample count n, not n - 1 (delve's ``TorchCovarianceMatrix.fix``). Kept in
  float64. The scale does not change the saturation.
* eigenvalues ``lambda_1 >= ... >= lambda_D`` of Q (negative rounding noise set to 0, as in
  delve); explained fraction of the top k: ``p_k = (lambda_1 + ... + lambda_k) / sum(lambda)``.
* intrinsic dimensionality for a threshold delta (default 0.99), two rules:

  - ``"smallest"`` (default, :data:`DEFAULT_RULE`; the probes stage's too): the smallest k
    with ``p_k >= delta`` (the papers' wording: the number of eigendirections needed to
    explain delta of the variance);
  - ``"delve"``: what delve 0.1.50's ``compute_intrinsic_dimensionality``
    (``delve/metrics.py``) returns: ``#{k : p_k < delta}``, the number of leading directions
    that explain strictly *less* than delta, i.e. exactly ``"smallest"`` minus one (0 when
    the top direction alone explains delta). Its intended corrections (at least 1; one more
    when the gap to delta exceeds 0.02) are no-ops there: both slice ``[:, :1]`` /
    ``[:, :m + 1]`` from the already cut m columns.

* saturation = intrinsic dimensionality / D, in (0, 1] (``"delve"``: [0, 1)).

Accumulation is streaming and batched: per batch and layer one float64 GEMM on the samples
shifted by a fixed reference (the first batch's mean), see :class:`CovarianceAccumulator`.
This is delve's ``sum(x x^T)/n - mu mu^T`` evaluated on shifted data: the same value, but it
does not lose digits when the mean is large compared with the spread (raw sums do; see the
tests).

delve's ``SaturationTracker`` (0.1.50) starts a new ``TorchCovarianceMatrix`` on every
forward while recording (``torchcallback.py``, the ``not isinstance(self.logs[...],
TorchCovarianceMatrix)`` test is always true), so it reports the saturation of the *last*
batch only; here every batch counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from landscape.activations import (
    ActivationCapture, batch_inputs, eval_mode, select_on_batches,
)

RULES = ("delve", "smallest")
# The papers' definition (Size Matters, Feature Space Saturation): the smallest k whose
# eigenvalues explain the threshold share; "delve" counts as delve 0.1.50 does (one fewer).
DEFAULT_RULE = "smallest"
_CHUNK_ELEMENTS = 1 << 24  # samples are cast to float64 this many elements at a time


def samples_of(output: Tensor, *, layer: str = "output") -> Tensor:
    """The (samples x dimensions) matrix of a layer output, in its own dtype.

    (N, D) -> (N, D); (N, L, D) -> (N*L, D) (every token a sample); (N, C, H, W) ->
    (N*H*W, C) (every position a sample, delve's ``channelwise``). Any other rank is an error
    naming ``layer``.
    """
    if output.dim() == 2:
        return output
    if output.dim() == 3:
        return output.reshape(-1, output.shape[2])
    if output.dim() == 4:
        return output.permute(0, 2, 3, 1).reshape(-1, output.shape[1])
    raise ValueError(
        f"layer {layer!r} gives an output of shape {tuple(output.shape)}; saturation needs "
        "(N, D) (linear), (N, L, D) (tokens) or (N, C, H, W) (conv) outputs"
    )


def _width(x: Tensor) -> int:
    """Dimensions of a sample: features last for (N, L, D) tokens, channels at 1 otherwise."""
    return x.shape[-1] if x.dim() == 3 else x.shape[1]


class CovarianceAccumulator:
    """Streaming float64 covariance of samples with a fixed number of dimensions.

    ``update(x)`` adds the rows of a 2-D (samples x D) tensor, or the samples of a conv output
    (see :func:`samples_of`); ``merge(other)`` adds another accumulator's samples. ``count``
    is the number of samples so far; :meth:`covariance` is the population covariance
    (divided by ``count``, as delve).

    State (float64, on the device of the first update): a shift s (the first batch's mean),
    and the sums of y = x - s and of y y^T. Per batch: one pass casting, shifting and laying
    out the channelwise samples, then one GEMM (y^T y) and one GEMV (the sums). The
    covariance ``S2/n - (S1/n)(S1/n)^T`` is delve's
    ``E[x x^T] - mu mu^T`` evaluated on shifted data: the same value, without cancelling
    digits when the mean is large compared with the spread.
    """

    def __init__(self, name: str = "samples") -> None:
        self.name = name
        self.count = 0
        self._shift: Tensor | None = None
        self._s1: Tensor | None = None  # sum of y
        self._s2: Tensor | None = None  # sum of y y^T

    @property
    def dim(self) -> int | None:
        """Number of dimensions D, or None before the first update."""
        return None if self._shift is None else self._shift.shape[0]

    @property
    def full_rank(self) -> bool:
        """More samples than dimensions: only then can the centred covariance (rank at most
        count - 1) show every direction; otherwise a saturation from it is biased low."""
        return self.dim is not None and self.count > self.dim

    def update(self, x: Tensor) -> CovarianceAccumulator:
        """Add the samples of ``x`` (2-D samples x D, 3-D tokens (N, L, D) or a 4-D conv
        output); returns self."""
        if not torch.is_tensor(x):
            raise TypeError(f"{self.name}: update needs a tensor, got {type(x).__name__}")
        x = x.detach()
        if x.dim() not in (2, 3, 4):
            samples_of(x, layer=self.name)  # raises, naming the layer
        d = _width(x)
        if self.dim is not None and d != self.dim:
            raise ValueError(f"{self.name}: samples have {d} dimensions, earlier ones had "
                             f"{self.dim}")
        if x.shape[0] == 0 or x[0].numel() == 0:
            return self
        per_input = x[0].numel()
        step = max(1, _CHUNK_ELEMENTS // per_input)
        for i in range(0, x.shape[0], step):
            self._update_chunk(x[i : i + step])
        return self

    def _update_chunk(self, x: Tensor) -> None:
        if self._shift is None:
            self._shift = samples_of(x).to(torch.float64).mean(dim=0)
            self._s1 = torch.zeros_like(self._shift)
            self._s2 = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=x.device)
        shift = self._shift.to(x.device)
        d = _width(x)
        # (N, C, H, W) -> (N*H*W, C) samples, cast and shifted in one pass into float64; a
        # (N, L, D) token sequence is (N*L, D) samples as it is laid out
        view = x.reshape(x.shape[0], d, -1).transpose(1, 2) if x.dim() == 4 else x
        y = torch.empty(view.shape, dtype=torch.float64, device=x.device)
        torch.sub(view, shift, out=y)
        y = y.view(-1, d)
        ones = torch.ones(1, y.shape[0], dtype=torch.float64, device=x.device)
        s1, s2 = (ones @ y)[0], y.T @ y  # GEMV and GEMM: column sums are slow otherwise
        self._s1 += s1.to(self._s1.device)
        self._s2 += s2.to(self._s2.device)
        self.count += y.numel() // self.dim

    def merge(self, other: CovarianceAccumulator) -> CovarianceAccumulator:
        """Add the samples accumulated by ``other`` (unchanged); returns self."""
        if other._shift is None:
            return self
        if self._shift is None:
            self._shift, self._s1 = other._shift.clone(), other._s1.clone()
            self._s2, self.count = other._s2.clone(), other.count
            return self
        if other.dim != self.dim:
            raise ValueError(f"{self.name}: cannot merge {other.dim}-dimensional samples into "
                             f"{self.dim}-dimensional ones")
        # other's y_o = x - s_o = y - delta with delta = s_o - s, so its sums about our shift:
        delta = (other._shift - self._shift.to(other._shift.device)).to(self._s1.device)
        s1_o, s2_o = other._s1.to(self._s1.device), other._s2.to(self._s1.device)
        cross = torch.outer(s1_o, delta)
        self._s1 += s1_o + other.count * delta
        self._s2 += s2_o + cross + cross.T + other.count * torch.outer(delta, delta)
        self.count += other.count
        return self

    def mean(self) -> Tensor:
        """Mean of the samples (D,), float64."""
        self._check_started()
        return self._shift + self._s1 / self.count

    @property
    def total_variance(self) -> float:
        """The covariance's trace (the sum of the per-dimension variances) without forming
        the D x D matrix: 0 when every sample is the same."""
        self._check_started()
        m = self._s1 / self.count
        return float((self._s2.diagonal() / self.count - m * m).sum())

    def covariance(self) -> Tensor:
        """Population covariance (D x D, float64): ``E[x x^T] - mu mu^T`` over the samples."""
        self._check_started()
        m = self._s1 / self.count
        cov = self._s2 / self.count - torch.outer(m, m)
        return (cov + cov.T) / 2  # exactly symmetric

    def _check_started(self) -> None:
        if self._shift is None or self.count == 0:
            raise ValueError(f"{self.name}: no samples were accumulated")


@dataclass(frozen=True, eq=False)
class SaturationResult:
    """Saturation of one layer: ``dim`` = D; ``intrinsic_dim`` in [1, D] (``"delve"``:
    [0, D - 1], see the module docstring); ``saturation`` =
    intrinsic_dim / D; ``eigenvalues`` of the covariance, descending, float64, negatives set
    to 0; ``threshold`` and ``rule`` as used; ``samples``: sample count (None when computed
    from a bare covariance); ``layer``: the module name (or the name given)."""

    layer: str
    dim: int
    intrinsic_dim: int
    saturation: float
    eigenvalues: np.ndarray
    threshold: float
    rule: str
    samples: int | None = None

    @property
    def explained(self) -> np.ndarray:
        """Explained variance fraction of the top k directions, k = 1..D."""
        return np.cumsum(self.eigenvalues) / self.eigenvalues.sum()


def check_threshold(threshold: float, rule: str) -> None:
    """Raise unless 0 < threshold < 1 and ``rule`` is one of :data:`RULES`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a number in (0, 1) (explained variance "
                         f"fraction, e.g. 0.99), got {threshold!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def intrinsic_dimension(eigenvalues: np.ndarray, threshold: float, rule: str) -> int:
    """Intrinsic dimensionality from descending, non-negative eigenvalues (see module doc)."""
    explained = np.cumsum(eigenvalues) / eigenvalues.sum()
    below = int(np.count_nonzero(explained < threshold))  # explained is non-decreasing
    return min(below + 1, len(eigenvalues)) if rule == "smallest" else below


def saturation_from_covariance(
    cov: Tensor | np.ndarray,
    threshold: float = 0.99,
    *,
    rule: str = DEFAULT_RULE,
    layer: str = "cov",
    samples: int | None = None,
) -> SaturationResult:
    """Saturation of a symmetric covariance matrix (eigenvalues via float64 ``eigvalsh``).

    Zero total variance (every sample the same) has no intrinsic dimensionality and raises a
    ValueError naming ``layer`` (delve returns 0 there: every NaN comparison is false).
    """
    check_threshold(threshold, rule)
    cov = torch.as_tensor(cov).to(torch.float64)
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] == 0:
        raise ValueError(f"layer {layer!r}: the covariance must be a square D x D matrix, "
                         f"got shape {tuple(cov.shape)}")
    if not torch.isfinite(cov).all():
        raise ValueError(f"layer {layer!r}: the covariance has non-finite entries (inf/nan "
                         "activations)")
    eig = torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0).cpu().numpy()
    if not eig.sum() > 0.0:
        raise ValueError(f"layer {layer!r}: zero total variance (every sample is the same), "
                         "so saturation is undefined")
    k = intrinsic_dimension(eig, float(threshold), rule)
    d = cov.shape[0]
    return SaturationResult(layer=layer, dim=d, intrinsic_dim=k, saturation=k / d,
                            eigenvalues=eig, threshold=float(threshold), rule=rule,
                            samples=samples)


def accumulator_saturation(
    acc: CovarianceAccumulator,
    threshold: float = 0.99,
    *,
    rule: str = DEFAULT_RULE,
    allow_rank_deficient: bool = False,
) -> SaturationResult:
    """Saturation of an accumulator's samples, named by ``acc.name``.

    The centred covariance of n samples has rank at most n - 1, so fewer than D + 1 samples
    cannot show every direction and bias the saturation down: this raises unless
    ``allow_rank_deficient`` (which still needs 2 samples).
    """
    acc._check_started()
    n, d = acc.count, acc.dim
    need = 2 if allow_rank_deficient else d + 1
    if n < need:  # need = d + 1: acc.full_rank
        hint = "" if allow_rank_deficient else (
            " (a full-rank estimate needs count > dim; pass more inputs, or "
            "allow_rank_deficient=True to accept a biased-low saturation)")
        raise ValueError(f"layer {acc.name!r}: {n} samples for {d} dimensions, need at least "
                         f"{need}{hint}")
    return saturation_from_covariance(acc.covariance(), threshold, rule=rule, layer=acc.name,
                                      samples=n)


def layer_accumulators(
    model: nn.Module,
    batches: Iterable[Tensor | Sequence[Tensor]],
    *,
    layers: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, CovarianceAccumulator]:
    """One :class:`CovarianceAccumulator` per selected layer, in execution order, filled by
    ONE forward per batch (eval mode, no grad; the caller's modes are restored).

    ``layers``: glob patterns on module names (``None``: every Conv2d and Linear);
    ``batches`` yields input tensors or (inputs, labels, ...) tuples; the model must already
    be on ``device``.
    """
    names, batches = select_on_batches(model, layers, batches, device)
    accs = {n: CovarianceAccumulator(n) for n in names}
    order: list[str] | None = None
    with torch.no_grad(), eval_mode(model), ActivationCapture(
            model, names, lambda name, out: accs[name].update(out)) as capture:
        for batch in batches:
            order = capture.run(batch_inputs(batch).to(device))
    if order is None:
        raise ValueError("batches yielded no batch")
    return {n: accs[n] for n in order}


def layer_saturation(
    model: nn.Module,
    batches: Iterable[Tensor | Sequence[Tensor]],
    *,
    layers: Sequence[str] | None = None,
    threshold: float = 0.99,
    rule: str = DEFAULT_RULE,
    device: str | torch.device = "cpu",
    allow_rank_deficient: bool = False,
) -> dict[str, SaturationResult]:
    """Saturation of every selected layer over all ``batches``, in execution order.

    See :func:`layer_accumulators` (one forward per batch feeds every layer) and
    :func:`accumulator_saturation` (sample-count rule). Computed in eval mode: BatchNorm uses
    its running statistics, dropout is off.
    """
    check_threshold(threshold, rule)
    accs = layer_accumulators(model, batches, layers=layers, device=device)
    return {n: accumulator_saturation(a, threshold, rule=rule,
                                      allow_rank_deficient=allow_rank_deficient)
            for n, a in accs.items()}


def saturation_frame(results: dict[str, SaturationResult]) -> pd.DataFrame:
    """One row per layer (execution order): layer, position (0-based), dim, samples,
    intrinsic_dim, saturation, threshold, rule."""
    rows = [{"layer": r.layer, "position": i, "dim": r.dim, "samples": r.samples,
             "intrinsic_dim": r.intrinsic_dim, "saturation": r.saturation,
             "threshold": r.threshold, "rule": r.rule}
            for i, r in enumerate(results.values())]
    return pd.DataFrame(rows, columns=["layer", "position", "dim", "samples",
                                       "intrinsic_dim", "saturation", "threshold", "rule"])
