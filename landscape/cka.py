"""Linear centred kernel alignment (CKA) between representations, and layerwise CKA matrices.

For representations X (n x p) and Y (n x q) of the same n examples, with linear Grams
K = X X^T and L = Y Y^T (Kornblith et al. 2019, "Similarity of neural network
representations revisited"):

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

* biased:   HSIC_0(K, L) = tr(K H L H) / (n - 1)^2, H = I - 11^T / n; CKA in [0, 1].
* debiased: the unbiased HSIC_1 of Song et al. (2012), computed as <U(K), U(L)> / (n (n - 3))
  with U the U-centring of Szekely & Rizzo (2014); the ratio may be slightly negative.
* minibatch (Nguyen, Raghu & Kornblith 2021): HSIC_1 averaged over minibatches in numerator
  and denominator, for representations that do not fit in memory.

All centring happens in float64 on column-centred features: double-centring a raw float32
Gram of conv features with a large common offset loses every significant digit. Both HSIC
estimators are invariant to adding one vector to every row of X, so centring first is free.
A representation that is constant over the examples has HSIC 0 and gives CKA = nan.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from landscape.activations import (
    DEFAULT_LAYER_TYPES, ActivationCapture, check_on_device, eval_mode, select_modules,
)
from landscape.device import progress_enabled

ArrayLike = Tensor | np.ndarray
ESTIMATORS = ("biased", "debiased", "minibatch")
_CHUNK_ELEMENTS = 1 << 24  # features are cast to float64 this many elements at a time


def _matrix(x: ArrayLike, arg: str, min_rows: int = 2) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"{arg} must be a 2-D (examples x features) matrix, got {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{arg} needs at least {min_rows} examples (rows), got {x.shape[0]}")
    return x


def _centred(x: Tensor) -> Tensor:
    x = x.to(torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def gram_linear(x: ArrayLike) -> Tensor:
    """float64 linear Gram (n x n) of the column-centred features: H X X^T H."""
    x = _matrix(x, "x", min_rows=1)
    n = x.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for j in range(0, x.shape[1], step):
        f = _centred(x[:, j : j + step])
        gram += f @ f.T
    return gram


def center_gram(gram: ArrayLike, *, unbiased: bool = False) -> Tensor:
    """Centre a symmetric Gram matrix in float64.

    Biased: H K H. Unbiased (U-centring): with a zero diagonal, row sums r and total s,
    U_ij = K_ij - r_i / (n - 2) - r_j / (n - 2) + s / ((n - 1)(n - 2)) for i != j, U_ii = 0.
    """
    k = _matrix(gram, "gram", min_rows=4 if unbiased else 2).to(torch.float64)
    n = k.shape[0]
    if k.shape[1] != n:
        raise ValueError(f"gram must be square, got shape {tuple(k.shape)}")
    if (k - k.T).abs().max() > 1e-6 * k.abs().max():
        raise ValueError("gram must be symmetric (a Gram matrix K = X X^T)")
    if not unbiased:
        k = k - k.mean(dim=0, keepdim=True)
        return k - k.mean(dim=1, keepdim=True)
    k = k.clone()
    k.fill_diagonal_(0.0)
    means = k.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    k = k - means[:, None] - means[None, :]
    k.fill_diagonal_(0.0)
    return k


def _hsic_scale(n: int, unbiased: bool) -> float:
    return 1.0 / (n * (n - 3)) if unbiased else 1.0 / (n - 1) ** 2


def _centred_pair(kx: ArrayLike, ky: ArrayLike, unbiased: bool) -> tuple[Tensor, Tensor]:
    cx, cy = center_gram(kx, unbiased=unbiased), center_gram(ky, unbiased=unbiased)
    if cx.shape != cy.shape:
        raise ValueError(f"kx, ky must have the same shape, got {tuple(cx.shape)}, {tuple(cy.shape)}")
    return cx, cy


def hsic(kx: ArrayLike, ky: ArrayLike, *, unbiased: bool = False) -> float:
    """HSIC estimate from two Gram matrices: HSIC_0 (biased) or HSIC_1 (unbiased, Song 2012)."""
    cx, cy = _centred_pair(kx, ky, unbiased)
    return float((cx * cy).sum()) * _hsic_scale(cx.shape[0], unbiased)


def cka_from_grams(kx: ArrayLike, ky: ArrayLike, *, debiased: bool = False) -> float:
    """CKA from two n x n Gram matrices (any kernel); ``debiased`` uses HSIC_1."""
    cx, cy = _centred_pair(kx, ky, debiased)
    return float((cx * cy).sum() / (cx.norm() * cy.norm()))


def _feature_hsic(x: Tensor, y: Tensor, unbiased: bool) -> Tensor:
    """HSIC of centred features without forming n x n Grams (x, y centred, float64).

    Unbiased: with row norms r_x = diag(X X^T) and ||X||_F^2 = sum r_x,
    n (n - 3) HSIC_1 = ||X^T Y||_F^2 - n / (n - 2) r_x . r_y + ||X||^2 ||Y||^2 / ((n-1)(n-2)).
    """
    n = x.shape[0]
    value = (x.T @ y).square().sum()
    if unbiased:
        rx, ry = x.square().sum(dim=1), y.square().sum(dim=1)
        value = value - n / (n - 2) * (rx @ ry) + rx.sum() * ry.sum() / ((n - 1) * (n - 2))
    return value * _hsic_scale(n, unbiased)


def linear_cka(
    x: ArrayLike, y: ArrayLike, *, debiased: bool = False, method: str = "auto"
) -> float:
    """Linear CKA between x (n x p) and y (n x q), computed in float64.

    ``method``: ``"features"`` (uses p x q products; cheap when p, q < n), ``"gram"`` (n x n
    Grams; cheap when p, q > n) or ``"auto"`` (the cheaper). Both give the same value.
    """
    need = 4 if debiased else 2
    x, y = _matrix(x, "x", need), _matrix(y, "y", need)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples, got {x.shape[0]}, {y.shape[0]} rows")
    if method not in ("auto", "features", "gram"):
        raise ValueError(f"method must be 'auto', 'features' or 'gram', got {method!r}")
    if method == "auto":
        method = "features" if max(x.shape[1], y.shape[1]) < x.shape[0] else "gram"
    if method == "gram":
        return cka_from_grams(gram_linear(x), gram_linear(y), debiased=debiased)
    xc, yc = _centred(x), _centred(y)
    xy = _feature_hsic(xc, yc, debiased)
    xx, yy = _feature_hsic(xc, xc, debiased), _feature_hsic(yc, yc, debiased)
    return float(xy / torch.sqrt(xx * yy))


def _as_list(xs: ArrayLike | Sequence[ArrayLike], arg: str) -> list[Tensor]:
    if isinstance(xs, (Tensor, np.ndarray)):
        return [_matrix(xs, arg, 4)]
    out = [_matrix(x, f"{arg}[{i}]", 4) for i, x in enumerate(xs)]
    if not out:
        raise ValueError(f"{arg} must hold at least one representation")
    return out


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith 2021), usable as an accumulator.

    CKA = mean_i HSIC_1(K_i, L_i) / sqrt(mean_i HSIC_1(K_i, K_i) mean_i HSIC_1(L_i, L_i)),
    K_i, L_i the linear Grams of minibatch i. Tracks every pair of L_a representations ``xs``
    and L_b representations ``ys`` at once (each batch Gram is computed once). With a single
    batch it equals the debiased CKA. Each batch needs at least 4 examples.
    """

    def __init__(self) -> None:
        self._xy: Tensor | None = None  # (L_a, L_b) sums of HSIC_1
        self._xx: Tensor | None = None  # (L_a,)
        self._yy: Tensor | None = None  # (L_b,)
        self.batches = 0
        self.examples = 0

    def update(
        self,
        xs: ArrayLike | Sequence[ArrayLike],
        ys: ArrayLike | Sequence[ArrayLike],
    ) -> None:
        """Add one minibatch: ``xs``/``ys`` is one (m x p) matrix or a sequence of them."""
        lx, ly = _as_list(xs, "xs"), _as_list(ys, "ys")
        sizes = {t.shape[0] for t in lx + ly}
        if len(sizes) != 1:
            raise ValueError(f"all representations of a batch need the same rows, got {sorted(sizes)}")
        self.add_centred_grams(
            [center_gram(gram_linear(x), unbiased=True) for x in lx],
            [center_gram(gram_linear(y), unbiased=True) for y in ly],
        )

    def add_centred_grams(self, gxs: Sequence[Tensor], gys: Sequence[Tensor]) -> None:
        """Add one minibatch given its U-centred Grams (see :func:`center_gram`)."""
        gx = torch.stack([g.reshape(-1) for g in gxs])
        gy = torch.stack([g.reshape(-1) for g in gys])
        m = gxs[0].shape[0]
        if self._xy is not None and self._xy.shape != (gx.shape[0], gy.shape[0]):
            raise ValueError(
                f"every batch must give the same number of representations: first "
                f"{tuple(self._xy.shape)}, now {(gx.shape[0], gy.shape[0])}"
            )
        scale = _hsic_scale(m, True)
        xy, xx, yy = gx @ gy.T * scale, gx.square().sum(1) * scale, gy.square().sum(1) * scale
        if self._xy is None:
            self._xy, self._xx, self._yy = xy, xx, yy
        else:
            self._xy, self._xx, self._yy = self._xy + xy, self._xx + xx, self._yy + yy
        self.batches += 1
        self.examples += m

    def compute(self) -> np.ndarray:
        """(L_a x L_b) float64 CKA matrix of everything added so far."""
        if self._xy is None:
            raise ValueError("MinibatchCKA.compute() called before any update()")
        return _normalise(self._xy, self._xx, self._yy)


def _normalise(xy: Tensor, xx: Tensor, yy: Tensor) -> np.ndarray:
    return (xy / torch.sqrt(torch.outer(xx, yy))).cpu().numpy()


def minibatch_cka(
    x_batches: Iterable[ArrayLike], y_batches: Iterable[ArrayLike]
) -> float:
    """Minibatch CKA of paired batches (x_i: m_i x p, y_i: m_i x q); see :class:`MinibatchCKA`."""
    acc = MinibatchCKA()
    for x, y in zip(x_batches, y_batches, strict=True):
        acc.update(x, y)
    return float(acc.compute()[0, 0])


@dataclass(frozen=True, eq=False)
class LayerwiseCKA:
    """CKA between every layer of model a (rows) and every layer of model b (columns).

    ``matrix[i, j]`` = CKA(layers_a[i] of a, layers_b[j] of b), float64; not symmetric in
    general. Layers are listed in execution order. ``estimator`` is one of ``ESTIMATORS``;
    ``batch_size`` is set for ``"minibatch"``; ``n`` is the number of inputs.
    """

    matrix: np.ndarray
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    estimator: str
    n: int
    batch_size: int | None = None

    def pairs(self) -> list[tuple[str, str, float]]:
        """(layer_a, layer_b, cka) for every cell, row-major."""
        return [
            (a, b, float(self.matrix[i, j]))
            for i, a in enumerate(self.layers_a)
            for j, b in enumerate(self.layers_b)
        ]


def _centred_grams(
    model: nn.Module, names: list[str], x: Tensor, unbiased: bool
) -> tuple[list[str], list[Tensor]]:
    """Centred float64 Gram of every selected layer's flattened output on ``x``, in execution
    order. Each Gram is formed inside the hook, so only n x n matrices outlive the forward."""
    grams: list[Tensor] = []

    def on_output(_name: str, out: Tensor) -> None:
        features = out.detach().reshape(out.shape[0], -1)
        grams.append(center_gram(gram_linear(features), unbiased=unbiased))

    with ActivationCapture(model, names, on_output) as capture:
        order = capture.run(x)
    return order, grams


def _batches(inputs: Tensor, batch_size: int) -> list[Tensor]:
    """``torch.split`` by ``batch_size``; a trailing batch of fewer than 4 joins the previous."""
    parts = list(torch.split(inputs, batch_size))
    if len(parts) > 1 and parts[-1].shape[0] < 4:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


def _check_batch_size(batch_size: int | None, debiased: bool) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 4:
        raise ValueError(f"batch_size must be None or an integer >= 4, got {batch_size!r}")
    if not debiased:
        raise ValueError(
            "batch_size is set, so the minibatch estimator (unbiased HSIC_1) is used; "
            "pass debiased=True to confirm, or batch_size=None for the biased estimator"
        )


def _pairwise(
    models: Mapping[Hashable, nn.Module],
    names: Mapping[Hashable, list[str]],
    inputs: Tensor,
    pairs: list[tuple[Hashable, Hashable]],
    debiased: bool,
    batch_size: int | None,
    progress: bool,
) -> dict[tuple[Hashable, Hashable], LayerwiseCKA]:
    """Layerwise CKA of every pair; each model's forward and Grams happen once per batch."""
    keys = list(dict.fromkeys(k for pair in pairs for k in pair))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = functools.partial(tqdm, desc="layerwise CKA", disable=not progress_enabled())
    orders: dict[Hashable, list[str]] = {}
    with contextlib.ExitStack() as stack, torch.no_grad():
        for k in keys:
            stack.enter_context(eval_mode(models[k]))
        if batch_size is None:
            grams, norms = {}, {}
            for k in bar(keys) if bar else keys:
                orders[k], layer_grams = _centred_grams(models[k], names[k], inputs, debiased)
                grams[k] = torch.stack([g.reshape(-1) for g in layer_grams])
                del layer_grams
                norms[k] = grams[k].square().sum(1)
            matrices = {(a, b): _normalise(grams[a] @ grams[b].T, norms[a], norms[b])
                        for a, b in pairs}
            estimator = "debiased" if debiased else "biased"
        else:
            accumulators = {pair: MinibatchCKA() for pair in pairs}
            batches = _batches(inputs, batch_size)
            for xb in bar(batches) if bar else batches:
                batch = {k: _centred_grams(models[k], names[k], xb, True) for k in keys}
                if orders and any(orders[k] != batch[k][0] for k in keys):
                    raise ValueError("selected layers ran in a different order between batches")
                orders = {k: batch[k][0] for k in keys}
                for a, b in pairs:
                    accumulators[(a, b)].add_centred_grams(batch[a][1], batch[b][1])
            matrices = {pair: acc.compute() for pair, acc in accumulators.items()}
            estimator = "minibatch"
    return {
        (a, b): LayerwiseCKA(
            matrix=matrices[(a, b)], layers_a=tuple(orders[a]), layers_b=tuple(orders[b]),
            estimator=estimator, n=inputs.shape[0], batch_size=batch_size,
        )
        for a, b in pairs
    }


def _prepare(models: Mapping[Hashable, nn.Module], inputs: Tensor, debiased: bool,
             batch_size: int | None, device: str | torch.device, arg: str) -> Tensor:
    if not isinstance(inputs, Tensor) or inputs.dim() < 2:
        raise ValueError("inputs must be a tensor of shape (n, ...) with a batch dimension")
    _check_batch_size(batch_size, debiased)
    n = inputs.shape[0]
    if n < (4 if debiased else 2):
        raise ValueError(f"inputs must hold at least {4 if debiased else 2} examples, got {n}")
    for key, model in models.items():
        check_on_device(model, device, arg=arg.format(key=key))
    return inputs.to(device)


def layerwise_cka(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: Tensor,
    *,
    layers: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    debiased: bool = False,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> LayerwiseCKA:
    """Linear CKA between every selected layer of ``model_a`` and every one of ``model_b``.

    Layers are glob patterns on module names (``fnmatch``); ``None`` = the output of every
    ``Conv2d`` and ``Linear``; ``layers_b`` defaults to ``layers``. Outputs are flattened per
    example and captured under ``no_grad`` in eval mode (the caller's modes are restored).
    Without ``batch_size``, one forward of all ``inputs`` per model and each layer's n x n Gram
    is reused for all pairs (``debiased`` picks HSIC_1 over HSIC_0). With ``batch_size``, the
    minibatch estimator over ``torch.split(inputs, batch_size)`` (requires ``debiased=True``).
    The models must already be on ``device``. For many pairs of models (the seeds of a cell)
    use :func:`layerwise_cka_pairs`, which computes each model's Grams once.
    """
    inputs = _prepare({"a": model_a, "b": model_b}, inputs, debiased, batch_size, device,
                      arg="model_{key}")
    names_a = select_modules(model_a, layers, arg="layers", example=inputs)
    names_b = select_modules(model_b, layers if layers_b is None else layers_b, arg="layers_b",
                             example=inputs)
    if model_a is model_b and names_a == names_b:
        models, names, pair = {"a": model_a}, {"a": names_a}, ("a", "a")
    else:
        models, names, pair = {"a": model_a, "b": model_b}, {"a": names_a, "b": names_b}, ("a", "b")
    return _pairwise(models, names, inputs, [pair], debiased, batch_size, progress)[pair]


def layerwise_cka_pairs(
    models: Mapping[Hashable, nn.Module],
    inputs: Tensor,
    pairs: Sequence[tuple[Hashable, Hashable]],
    *,
    layers: Sequence[str] | None = None,
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    debiased: bool = False,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[tuple[Hashable, Hashable], LayerwiseCKA]:
    """:func:`layerwise_cka` for several pairs of ``models`` (key -> model), e.g. every pair
    of seeds of a cell: one forward and one set of Grams per model and batch, not two per
    pair. ``pairs`` holds keys of ``models``; ``(k, k)`` compares a model with itself.
    ``layers`` selects the same modules in every model (``None``: every module of one of
    ``layer_types``, e.g. ``(nn.ReLU,)`` for the paper's). The full-batch estimator holds the
    Grams of all models at once: layers x n^2 float64 numbers per model.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of key -> model")
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"pairs must be a non-empty sequence of (key_a, key_b), got {pairs!r}")
    unknown = sorted({k for p in pairs for k in p if k not in models}, key=str)
    if unknown:
        raise ValueError(f"pairs name models {unknown} that are not in models "
                         f"(keys: {sorted(models, key=str)})")
    used = {k: models[k] for k in dict.fromkeys(k for p in pairs for k in p)}
    inputs = _prepare(used, inputs, debiased, batch_size, device, arg="models[{key!r}]")
    names = {k: select_modules(m, layers, arg="layers", types=layer_types, example=inputs)
             for k, m in used.items()}
    return _pairwise(used, names, inputs, pairs, debiased, batch_size, progress)


def symmetrised_upper(matrix: np.ndarray) -> np.ndarray:
    """The paper's CKA matrix from a full one: the upper triangle (``j >= i``) mirrored,
    ``S[i, j] = S[j, i] = M[min(i, j), max(i, j)]``. Its released code computes only
    ``j >= i`` and symmetrises, so for two different models the lower triangle shows
    CKA(a_i, b_j) with i < j, not CKA(a_j, b_i)."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square, got shape {m.shape}")
    upper = np.triu(m)
    return upper + np.triu(m, 1).T
