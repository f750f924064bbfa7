"""The Hessian of the mean data loss over a fixed evaluation set, as a flat linear operator.

For batches ``(x_b, y_b)`` with ``n_b`` examples, ``N = sum_b n_b`` and a ``loss_fn`` that
returns the batch MEAN, the loss is ``L(theta) = sum_b (n_b / N) loss_fn(f(x_b; theta), y_b)``,
the mean over all ``N`` examples (an uneven last batch is weighted exactly). No weight decay.
``HessianOperator(v) = d^2 L / d theta^2 @ v`` on a flat vector over the selected parameters.

The caller's model is never changed: parameters and buffers are read once (shared storage, no
copy on the same device) and passed to :func:`torch.func.functional_call`; train/eval flags and
BatchNorm settings are set for the duration of each call and restored in ``finally``.

An op whose backward torch cannot differentiate again has no Hessian-vector product. The one
such activation in torch's zoo, ``F.hardsigmoid`` (MobileNetV3's squeeze-and-excitation gate),
is evaluated as ``clamp(x + 3, 0, 6) / 6`` while the operator runs (:class:`TwiceDifferentiable`:
bit-identical values, the same first derivative, and second derivative 0 wherever it exists, as
for ReLU), ``F.normalize`` so that a zero row has a finite second derivative (SwinV2's cosine
attention on padded windows; same values bit for bit), and attention
(``F.scaled_dot_product_attention``, in every timm and torchvision transformer) runs on
torch's math backend, whose ops all have second derivatives, instead of a fused kernel (the
same function, to float rounding); any other op without a second derivative raises
:class:`NoSecondDerivativeError` naming it, and so does a product that comes out non-finite
for a finite vector (an op whose second derivative is undefined at these weights), naming the
first parameter.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.nn.modules.batchnorm import _BatchNorm

LossFn = Callable[[Tensor, Tensor], Tensor]
Batches = Sequence[tuple[Tensor, Tensor]]
ParamSelection = Union[None, Sequence[str], Callable[[str, nn.Parameter], bool]]

BN_MODES = ("eval", "recalibrated", "train")
HVP_METHODS = ("forward_over_reverse", "reverse_over_reverse")
# Both are tested against the dense Hessian. On CPU double backward is faster
# (benchmarks/hessian_topk.py, 1,946-param CNN, 512 images in batches of 128, one thread:
# 0.18 s vs 0.27 s per HVP; torch.func adds per-call overhead). Forward-over-reverse may win
# on GPU.
DEFAULT_HVP_METHOD = "reverse_over_reverse"


class NoSecondDerivativeError(ValueError):
    """The model uses an op whose backward torch cannot differentiate (no Hessian-vector
    products)."""


class TwiceDifferentiable(TorchFunctionMode):
    """Within this mode ``F.hardsigmoid`` (whose backward has no derivative in torch) is computed
    as ``clamp(x + 3, 0, 6) / 6``: the same values bit for bit (float32 and float64), the same
    gradient, and a second derivative (0 off the kinks at -3 and 3). ``inplace`` is dropped:
    the result is a new tensor, so an autograd graph through it stays valid. ``F.normalize``
    is computed by :func:`_normalize` (a finite second derivative at zero rows)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.hardsigmoid:
            return (args[0] + 3).clamp(0, 6) / 6
        if func is F.normalize and kwargs.get("out") is None:
            return _normalize(*args, **kwargs)
        return func(*args, **kwargs)


def _normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12,
               out: None = None) -> Tensor:
    """``F.normalize`` with the same values bit for bit and the same gradient, whose second
    derivative is finite where a row is zero: torch's norm has a NaN double backward at a
    zero vector (SwinV2's cosine attention normalises the zero keys of its padded windows),
    so the norm of a zero row is taken of a stand-in row of ones and replaced by 0 (then
    clamped to ``eps`` as F.normalize does: the row's derivative through it is 0 there)."""
    zero = (input == 0).all(dim=dim, keepdim=True)
    safe = torch.where(zero, torch.ones_like(input), input)
    norm = torch.where(zero, torch.zeros_like(zero, dtype=input.dtype),
                       torch.linalg.vector_norm(safe, p, dim, keepdim=True))
    return input / norm.clamp_min(eps).expand_as(input)


@contextmanager
def second_derivatives() -> Iterator[None]:
    """Run the block under :class:`TwiceDifferentiable`, with ``F.scaled_dot_product_attention``
    on its math backend (matmuls and a softmax: the fused flash / memory-efficient kernels a
    transformer's attention takes otherwise have no double backward); torch's "derivative for
    <op> is not implemented" becomes :class:`NoSecondDerivativeError` naming the op."""
    try:
        with TwiceDifferentiable(), sdpa_kernel(SDPBackend.MATH):
            yield
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        if "derivative for" not in first or "not implemented" not in first:
            raise
        raise NoSecondDerivativeError(
            f"the model has an op without a second derivative in torch ({first}); Hessian-vector "
            "products need one") from None


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """Raise ValueError naming the argument and its allowed values."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def select_parameters(model: nn.Module, params: ParamSelection = None) -> list[str]:
    """Names of the selected parameters in model order: all (None), a list of names, or a
    predicate ``fn(name, parameter) -> bool``. ``requires_grad`` is ignored."""
    named = list(model.named_parameters())
    valid = [n for n, _ in named]
    if params is None:
        names = valid
    elif callable(params):
        names = [n for n, p in named if params(n, p)]
    elif isinstance(params, str) or not isinstance(params, Sequence):
        raise TypeError(
            f"params must be None, a sequence of parameter names or a predicate; got {params!r}"
        )
    else:
        unknown = [n for n in params if n not in valid]
        if unknown:
            raise ValueError(f"params: unknown parameter names {unknown}; valid names: {valid}")
        if len(set(params)) != len(params):
            raise ValueError(f"params: duplicate names in {list(params)}")
        chosen = set(params)
        names = [n for n in valid if n in chosen]
    if not names:
        raise ValueError("params selects no parameters")
    return names


@contextmanager
def model_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Temporarily set the model for a deterministic Hessian: eval everywhere (no dropout);
    with ``bn_mode="train"`` BatchNorm uses batch statistics without updating running stats.
    Every module's ``training``, and BN's ``track_running_stats``/``momentum``, are restored."""
    saved = [(m, m.training) for m in model.modules()]
    bns = [(m, m.track_running_stats, m.momentum)
           for m in model.modules() if isinstance(m, _BatchNorm)]
    try:
        model.eval()
        if bn_mode == "train":
            for m, _, _ in bns:
                m.train()
                m.track_running_stats = False  # batch stats, running stats neither used nor updated
        yield
    finally:
        for m, training in saved:
            m.training = training
        for m, track, momentum in bns:
            m.track_running_stats, m.momentum = track, momentum


class UnequalBatchesWarning(UserWarning):
    """Batches of different sizes with BatchNorm in train mode (:class:`HessianOperator`)."""


def recalibrated_buffers(
    model: nn.Module, batches: Batches, *, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Copies of the model's buffers with BatchNorm running stats recomputed on ``batches``.

    Each BN layer gets the example-weighted mean over batches of its train-mode batch mean and
    unbiased batch variance (the batches are forwarded in train mode, as in SWA's ``update_bn``
    but weighted by batch size). The model's own buffers are not touched.
    """
    device = torch.device(device)
    state = {n: p.detach().to(device) for n, p in model.named_parameters()}
    buffers = {n: b.detach().to(device).clone() for n, b in model.named_buffers()}
    bns = [(n, m) for n, m in model.named_modules()
           if isinstance(m, _BatchNorm) and m.track_running_stats]
    for name, _ in bns:
        prefix = f"{name}." if name else ""
        buffers[prefix + "running_mean"].zero_()
        buffers[prefix + "running_var"].fill_(1.0)
    seen = 0
    with model_mode(model, "eval"), torch.no_grad():
        for _, m in bns:
            m.train()
        for x, _ in batches:
            seen += len(x)
            for _, m in bns:
                m.momentum = len(x) / seen  # running average weighted by batch size
            functional_call(model, {**state, **buffers}, (x.to(device),))
    return buffers


class HessianOperator:
    """``v -> H v`` for the mean data loss over ``batches`` (see module docstring).

    ``dim``, ``dtype`` and ``device`` describe the flat vectors; ``num_hvp`` counts calls.
    ``method`` is ``"forward_over_reverse"`` (torch.func ``jvp(grad)``) or
    ``"reverse_over_reverse"`` (double backward with ``torch.autograd.grad``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Batches,
        *,
        params: ParamSelection = None,
        bn_mode: str = "eval",
        device: str | torch.device = "cpu",
        method: str = DEFAULT_HVP_METHOD,
    ) -> None:
        check_choice("bn_mode", bn_mode, BN_MODES)
        check_choice("method", method, HVP_METHODS)
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable (outputs, targets) -> mean loss; got {loss_fn!r}"
            )
        self.device = torch.device(device)
        self.batches = _checked_batches(batches, self.device)
        sizes = [len(x) for x, _ in self.batches]
        if bn_mode == "train" and len(set(sizes)) > 1:
            warnings.warn(
                f"bn_mode='train' normalises each batch by its own statistics, and these "
                f"batches differ in size ({sizes}): the Hessian is that of the mean over "
                "batches of different networks, and a small batch (2 images: near-zero "
                "variance in a deep layer's small map) can make it many orders too large. "
                "The hessian stage gives equal batches only", UnequalBatchesWarning,
                stacklevel=2)
        self.num_examples = sum(sizes)
        self.model, self.loss_fn, self.bn_mode, self.method = model, loss_fn, bn_mode, method
        self.names = select_parameters(model, params)
        state = {n: p.detach().to(self.device) for n, p in model.named_parameters()}
        if bn_mode == "recalibrated":
            buffers = recalibrated_buffers(model, self.batches, device=self.device)
        else:
            buffers = {n: b.detach().to(self.device) for n, b in model.named_buffers()}
        self.primal = tuple(state[n] for n in self.names)
        self.buffers = buffers  # the buffers the Hessian is evaluated with (recalibrated copies)
        self._fixed = {n: t for n, t in state.items() if n not in set(self.names)} | buffers
        dtypes = {p.dtype for p in self.primal}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise TypeError(f"selected parameters must share one floating dtype; got {dtypes}")
        self.dtype = dtypes.pop()
        self.shapes = [p.shape for p in self.primal]
        self.numels = [p.numel() for p in self.primal]
        self.dim = sum(self.numels)
        self.num_hvp = 0

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vector: Tensor) -> tuple[Tensor, ...]:
        if vector.shape != (self.dim,):
            raise ValueError(
                f"expected a flat vector of shape ({self.dim},), got {tuple(vector.shape)}"
            )
        return tuple(t.view(s) for t, s in zip(torch.split(vector, self.numels), self.shapes))

    def parameters_vector(self) -> Tensor:
        """theta: the selected parameters as one flat vector (a copy)."""
        return self.flatten(self.primal)

    def _batch_loss(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> Tensor:
        state = dict(zip(self.names, params)) | self._fixed
        return self.loss_fn(functional_call(self.model, state, (x,)), y)

    def loss(self, theta: Tensor | None = None) -> float:
        """L(theta) (default: the model's parameters)."""
        params = self.primal if theta is None else self.unflatten(theta)
        with model_mode(self.model, self.bn_mode), torch.no_grad():
            return float(sum(self._batch_loss(params, x, y) * (len(x) / self.num_examples)
                             for x, y in self.batches))

    def gradient(self, theta: Tensor | None = None) -> Tensor:
        """Flat dL/dtheta at ``theta`` (default: the model's parameters)."""
        params = self.primal if theta is None else self.unflatten(theta)
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with model_mode(self.model, self.bn_mode):
            for x, y in self.batches:
                g = grad(self._batch_loss)(params, x, y)
                total.add_(self.flatten(g), alpha=len(x) / self.num_examples)
        return total

    def __call__(self, vector: Tensor) -> Tensor:
        tangents = self.unflatten(vector.to(device=self.device, dtype=self.dtype))
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        hvp = self._hvp_forward if self.method == "forward_over_reverse" else self._hvp_reverse
        with model_mode(self.model, self.bn_mode), second_derivatives():
            for x, y in self.batches:
                total.add_(self.flatten(hvp(tangents, x, y)), alpha=len(x) / self.num_examples)
        self.num_hvp += 1
        if not torch.isfinite(total).all() and all(torch.isfinite(t).all() for t in tangents):
            raise NoSecondDerivativeError(
                "a Hessian-vector product is not finite (first in "
                f"{self._first_nonfinite(total)}) although the vector is: an op of the model "
                "has no finite second derivative at these weights and inputs")
        return total

    def _first_nonfinite(self, flat: Tensor) -> str:
        for name, part in zip(self.names, self.unflatten(flat)):
            if not torch.isfinite(part).all():
                return name
        return "?"

    def _hvp_forward(self, tangents: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Sequence[Tensor]:
        def grad_fn(params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return grad(self._batch_loss)(params, x, y)

        return jvp(grad_fn, (self.primal,), (tangents,))[1]

    def _hvp_reverse(self, tangents: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Sequence[Tensor]:
        params = [p.detach().requires_grad_() for p in self.primal]
        with torch.enable_grad():
            g = torch.autograd.grad(self._batch_loss(params, x, y), params, create_graph=True,
                                    allow_unused=True, materialize_grads=True)
            live = [(gi, ti) for gi, ti in zip(g, tangents) if gi.requires_grad]
            if not live:  # the loss is at most linear in every selected parameter
                return [torch.zeros_like(p) for p in params]
            return torch.autograd.grad([gi for gi, _ in live], params, [ti for _, ti in live],
                                       allow_unused=True, materialize_grads=True)


def _checked_batches(batches: Batches, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    if isinstance(batches, (Tensor, str)) or not isinstance(batches, Sequence) or not batches:
        raise ValueError("batches must be a non-empty list of (inputs, targets) tensor pairs")
    out = []
    for i, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, Tensor) for t in batch)):
            raise TypeError(f"batches[{i}] must be an (inputs, targets) pair of tensors")
        x, y = batch
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(
                f"batches[{i}]: inputs and targets need the same non-zero length; "
                f"got {len(x)} and {len(y)}"
            )
        out.append((x.to(device), y.to(device)))
    return out
