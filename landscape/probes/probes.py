"""Linear probes per layer (Alain & Bengio 2016; as used by Richter et al. 2021, "Size
Matters", appendix B) and per spatial position.

Features of a layer for one input:

* conv output (C, H, W): ``adaptive_avg_pool2d`` to ``min(size, H) x min(size, W)``
  (default size 4), flattened channel-major; ``size=None`` keeps the full map. A map smaller
  than ``size`` keeps its own size: pooling it up would repeat each position (a 1x1 map 16
  times at size 4), and the probe's L2 penalty on k standardised copies of a feature is k
  times weaker (the weight splits over the copies), so the probes of small maps would be
  regularised less than the others. ``pool_up=True`` pools them up anyway (the features
  before 2026-12-06);
* linear output (D,): taken as is.

Probe: the features are standardised with the training set's mean and standard deviation
(columns constant on the training set are dropped: they carry nothing to fit, and would only
shift the test inputs), then a multinomial logistic regression with L2 penalty (``C=1`` by
default) is fitted on the training features; the probe accuracy is the fraction of held-out
inputs classified correctly. Two backends minimise the same objective
(:mod:`landscape.probes.logistic`), both with L-BFGS from zero, stopping when every partial
derivative of the objective / (C n) is at most ``TOL`` = 1e-4 or after ``max_iter=1000``
iterations: ``torch`` (default: float32 on ``device``; :func:`fit_logistic`) and ``sklearn``
(scikit-learn's ``LogisticRegression``, solver ``lbfgs``, float64 on the CPU). Neither draws
random numbers. A probe that stops at ``max_iter`` is reported with ``converged=False`` (the
ConvergenceWarning is not raised). Where the problem is weakly regularised (as many features
as images or more) the two stop at different points near the minimum, and the held-out
accuracies can differ by a few points: rows record their backend.

Per-position probes (:func:`position_probe_map`): for one conv layer, one probe per spatial
position (h, w) on the C channels there; the result is an H x W accuracy map.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from landscape.activations import (
    ActivationCapture, check_on_device, eval_mode, select_on_batches,
)
from landscape.journal import Journal, saved
from landscape.probes.logistic import fit_logistic

Batches = Iterable[Sequence[Tensor]]
BACKENDS = ("torch", "sklearn")
DEFAULT_BACKEND = "torch"
TOL = 1e-4  # gradient max-norm at which both backends stop (scikit-learn's default tol)


@dataclass(frozen=True)
class ProbeResult:
    """One probe: held-out ``accuracy`` and ``train_accuracy`` in [0, 1]; ``features``:
    feature count fed to the classifier (constant columns removed); ``constant_features``:
    columns dropped as constant on the training set; ``n_train``, ``n_test``: inputs;
    ``classes``: distinct training labels; ``converged``: lbfgs stopped before max_iter;
    ``backend``: the one of :data:`BACKENDS` that fitted it."""

    layer: str
    accuracy: float
    train_accuracy: float
    features: int
    constant_features: int
    n_train: int
    n_test: int
    classes: int
    converged: bool
    backend: str = DEFAULT_BACKEND


def _check_xy(x: np.ndarray, y: np.ndarray, layer: str, which: str) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"layer {layer!r}: {which} features must be (n, p) with n labels, got "
                         f"{x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"layer {layer!r}: the {which} set is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"layer {layer!r}: {which} features have non-finite values")
    return x, y


def check_backend(backend: str, field: str = "backend") -> None:
    """``backend`` (the setting ``field``) must be one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"{field} must be one of {BACKENDS}, got {backend!r}")


def _standardised(train_x: np.ndarray, test_x: np.ndarray, layer: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both sets standardised with the training set's float64 mean and std, the columns
    constant on it dropped (possibly all); and the mask of the columns kept."""
    x64 = train_x.astype(np.float64)
    mean, std = x64.mean(axis=0), x64.std(axis=0)
    keep = std > 1e-12 * np.maximum(1.0, np.abs(mean))
    mean, std = mean[keep], std[keep]
    out = []
    for x in (x64, test_x.astype(np.float64)):
        x = np.compress(keep, x, axis=1)  # row-major, unlike x[:, keep]
        x -= mean
        x /= std
        out.append(x)
    return out[0], out[1], keep


def _fit_predict(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, *, C: float,
                 max_iter: int, backend: str, device) -> tuple[np.ndarray, np.ndarray, bool]:
    """(train predictions, test predictions, converged) of one probe."""
    if backend == "sklearn":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=float(C), solver="lbfgs", max_iter=max_iter, tol=TOL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xtr, ytr)
        return clf.predict(xtr), clf.predict(xte), bool(np.all(clf.n_iter_ < max_iter))
    x = torch.as_tensor(xtr, dtype=torch.float32, device=device)
    fit = fit_logistic(x, ytr, C=float(C), max_iter=max_iter, tol=TOL, device=device,
                       dtype=torch.float32)
    return fit.predict(x), fit.predict(torch.as_tensor(xte, dtype=torch.float32)), fit.converged


def probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    layer: str = "features",
    C: float = 1.0,
    max_iter: int = 1000,
    backend: str = DEFAULT_BACKEND,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """Fit one standardised logistic-regression probe on (train_x, train_y) and score it on
    (test_x, test_y); see the module docstring (``device``: where the torch backend fits).
    A layer whose every feature is constant on the training set (a dead layer, or one the
    image does not reach, such as a positional encoding's conv) gets the probe of no
    features, its intercept alone: the training set's most frequent class (the smallest
    label of a tie). Raises naming ``layer`` when the training labels hold fewer than 2
    classes."""
    check_backend(backend)
    train_x, train_y = _check_xy(train_x, train_y, layer, "train")
    test_x, test_y = _check_xy(test_x, test_y, layer, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"layer {layer!r}: train has {train_x.shape[1]} features, test "
                         f"{test_x.shape[1]}")
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise ValueError(f"layer {layer!r}: the training labels hold {len(classes)} class(es); "
                         "a probe needs at least 2")
    if not (isinstance(C, (int, float)) and C > 0) or not (isinstance(max_iter, int)
                                                           and max_iter >= 1):
        raise ValueError(f"C must be > 0 and max_iter an integer >= 1, got C={C!r}, "
                         f"max_iter={max_iter!r}")
    xtr, xte, keep = _standardised(train_x, test_x, layer)
    if keep.any():
        pred_tr, pred_te, converged = _fit_predict(xtr, train_y, xte, C=C, max_iter=max_iter,
                                                   backend=backend, device=device)
    else:  # the probe is its intercept alone: the training set's most frequent class
        counts = (train_y[:, None] == classes[None, :]).sum(axis=0)
        majority = classes[int(np.argmax(counts))]
        pred_tr, pred_te, converged = np.full_like(train_y, majority), np.full_like(
            test_y, majority), True
    return ProbeResult(
        layer=layer, accuracy=float(np.mean(pred_te == test_y)),
        train_accuracy=float(np.mean(pred_tr == train_y)),
        features=int(keep.sum()), constant_features=int((~keep).sum()),
        n_train=len(train_y), n_test=len(test_y), classes=len(classes),
        converged=converged, backend=backend,
    )


def layer_probes(
    train: Mapping[str, np.ndarray],
    train_y: np.ndarray,
    test: Mapping[str, np.ndarray],
    test_y: np.ndarray,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    backend: str = DEFAULT_BACKEND,
    device: str | torch.device = "cpu",
    journal: Journal | None = None,
) -> dict[str, ProbeResult]:
    """One :func:`probe_accuracy` per layer of the cached features ``train[name]`` /
    ``test[name]`` (the order of ``train``), all with one backend on one device. The layers
    are fitted one after the other: each fit is full-batch matrix products already, and one
    L-BFGS over all layers at once would share its line searches and stopping rule.
    ``journal`` (:mod:`landscape.journal`): each layer's result is saved (key
    ``"probe:<layer>"``), and a call that stopped fits only the layers it had not."""
    check_backend(backend)
    missing = [n for n in train if n not in test]
    if missing:
        raise ValueError(f"layers {missing} have training features but no test features")
    out = {}
    for n in train:
        params = {"layer": n, "C": C, "max_iter": max_iter, "backend": backend,
                  "train": list(np.shape(train[n])), "test": list(np.shape(test[n]))}
        state = saved(journal, f"probe:{n}", params)
        if state is not None:
            out[n] = ProbeResult(**state["result"])
            continue
        out[n] = probe_accuracy(train[n], train_y, test[n], test_y, layer=n, C=C,
                                max_iter=max_iter, backend=backend, device=device)
        if journal is not None:
            result = {k: v.item() if isinstance(v, np.generic) else v  # plain values
                      for k, v in dataclasses.asdict(out[n]).items()}
            journal.put(f"probe:{n}", {"params": params, "result": result})
    return out


def pool_map(output: Tensor, size: int | None, *, pool_up: bool = False) -> Tensor:
    """(N, C, H, W) conv output adaptive-average-pooled to ``min(size, H) x min(size, W)``
    (``pool_up``: ``size x size`` whatever the map's size; None: as is)."""
    if size is None:
        return output
    h, w = output.shape[-2:]
    return F.adaptive_avg_pool2d(output, size if pool_up else (min(size, h), min(size, w)))


def probe_features(output: Tensor, size: int | None = 4, *, layer: str = "output",
                   pool_up: bool = False) -> Tensor:
    """(N, features) of a layer output: conv (N, C, H, W) pooled by :func:`pool_map` and
    flattened; linear (N, D) as is; a token sequence (N, L, D) (a transformer's Linear /
    LayerNorm / block outputs, features last) averaged over its L tokens, whatever ``size``
    (tokens have no grid to pool to)."""
    if output.dim() == 2:
        return output
    if output.dim() == 3:
        return output.mean(dim=1)
    if output.dim() == 4:
        output = pool_map(output, size, pool_up=pool_up)
        return output.reshape(output.shape[0], -1)
    raise ValueError(f"layer {layer!r} gives an output of shape {tuple(output.shape)}; probes "
                     "need (N, D), (N, L, D) tokens or (N, C, H, W) outputs")


def _check_size(size: int | None) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be None or a positive integer (pooled side), got {size!r}")


def _collect(
    model: nn.Module, batches: Batches, names: list[str], transform, device,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``transform(name, output)`` of every named module (execution order) and the labels,
    from ONE forward per (inputs, labels) batch, eval mode, no grad; float32 numpy."""
    check_on_device(model, device)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    labels: list[np.ndarray] = []
    order: list[str] | None = None

    def on_output(name: str, out: Tensor) -> None:
        parts[name].append(transform(name, out.detach()).to(torch.float32).cpu().numpy())

    with torch.no_grad(), eval_mode(model), ActivationCapture(model, names, on_output) as cap:
        for batch in batches:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise TypeError("batches must yield (inputs, labels, ...) tuples")
            order = cap.run(batch[0].to(device))
            labels.append(torch.as_tensor(batch[1]).cpu().numpy().reshape(-1))
    if order is None:
        raise ValueError("batches yielded no batch")
    return {n: np.concatenate(parts[n]) for n in order}, np.concatenate(labels)


def extract_features(
    model: nn.Module,
    batches: Batches,
    *,
    layers: Sequence[str] | None = None,
    size: int | None = 4,
    pool_up: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(n, features) float32 arrays of every selected layer (execution order; see
    :func:`probe_features`) and the (n,) labels, from ONE forward per (inputs, labels) batch
    for all layers (eval mode, no grad; the caller's modes are restored)."""
    _check_size(size)
    names, batches = select_on_batches(model, layers, batches, device)
    return _collect(model, batches, names, lambda name, out: probe_features(
        out, size, layer=name, pool_up=pool_up), device)


def linear_probes(
    model: nn.Module,
    train_batches: Batches,
    test_batches: Batches,
    *,
    layers: Sequence[str] | None = None,
    size: int | None = 4,
    pool_up: bool = False,
    C: float = 1.0,
    max_iter: int = 1000,
    backend: str = DEFAULT_BACKEND,
    device: str | torch.device = "cpu",
) -> dict[str, ProbeResult]:
    """Probe accuracy of every selected layer (execution order): features from
    :func:`extract_features` on both sets, then :func:`layer_probes`."""
    check_backend(backend)
    kw = dict(layers=layers, size=size, pool_up=pool_up, device=device)
    train, ytr = extract_features(model, train_batches, **kw)
    test, yte = extract_features(model, test_batches, **kw)
    return layer_probes(train, ytr, test, yte, C=C, max_iter=max_iter, backend=backend,
                        device=device)


@dataclass(frozen=True, eq=False)
class PositionProbeMap:
    """Per-position probes of one layer: ``accuracy[h, w]`` (H x W float64) is the held-out
    accuracy of the probe on the C channels at position (h, w); ``train_accuracy`` likewise;
    ``converged[h, w]`` as in :class:`ProbeResult`; ``size``: the pooled side asked for (the
    map's own side where that is smaller; :func:`pool_map`) or None."""

    layer: str
    accuracy: np.ndarray
    train_accuracy: np.ndarray
    converged: np.ndarray
    channels: int
    size: int | None


def position_accuracy_map(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    *, layer: str = "features", C: float = 1.0, max_iter: int = 1000,
    backend: str = DEFAULT_BACKEND, device: str | torch.device = "cpu",
) -> PositionProbeMap:
    """One probe per position of (n, C, H, W) feature maps; see :class:`PositionProbeMap`."""
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    if train_x.ndim != 4 or test_x.ndim != 4 or train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"layer {layer!r}: per-position probes need (n, C, H, W) feature maps "
                         f"of one shape, got {train_x.shape} and {test_x.shape}")
    _, c, h, w = train_x.shape
    acc, tr_acc = np.empty((h, w)), np.empty((h, w))
    conv = np.empty((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            r = probe_accuracy(train_x[:, :, i, j], train_y, test_x[:, :, i, j], test_y,
                               layer=f"{layer}[{i},{j}]", C=C, max_iter=max_iter,
                               backend=backend, device=device)
            acc[i, j], tr_acc[i, j], conv[i, j] = r.accuracy, r.train_accuracy, r.converged
    return PositionProbeMap(layer=layer, accuracy=acc, train_accuracy=tr_acc, converged=conv,
                            channels=c, size=None)


def position_probe_map(
    model: nn.Module,
    train_batches: Batches,
    test_batches: Batches,
    layer: str,
    *,
    size: int | None = None,
    pool_up: bool = False,
    C: float = 1.0,
    max_iter: int = 1000,
    backend: str = DEFAULT_BACKEND,
    device: str | torch.device = "cpu",
) -> PositionProbeMap:
    """Accuracy map of per-position probes on the conv module named ``layer`` (exact name),
    its output pooled by :func:`pool_map` first when ``size`` is set (None: full resolution,
    H * W probes; a map smaller than ``size`` keeps its size unless ``pool_up``)."""
    _check_size(size)
    check_backend(backend)
    if not isinstance(layer, str) or not layer or layer not in dict(model.named_modules()):
        raise ValueError(f"layer must be the exact name of a module of the model, got {layer!r}")

    def pooled(name: str, out: Tensor) -> Tensor:
        if out.dim() != 4:
            raise ValueError(f"layer {name!r} gives an output of shape {tuple(out.shape)}; "
                             "per-position probes need a conv output (N, C, H, W)")
        return pool_map(out, size, pool_up=pool_up)

    train, ytr = _collect(model, train_batches, [layer], pooled, device)
    test, yte = _collect(model, test_batches, [layer], pooled, device)
    result = position_accuracy_map(train[layer], ytr, test[layer], yte, layer=layer, C=C,
                                   max_iter=max_iter, backend=backend, device=device)
    return dataclasses.replace(result, size=size)
