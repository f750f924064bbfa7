"""Projected-gradient importance maps (our measurement; the paper's procedure is
:mod:`landscape.importance.paper`).

A unit gradient is placed at the spatial centre of every channel of one conv layer (default:
the last ``Conv2d`` to run) and back-propagated to the input x (n x C x H x W):

    map_i(u, v) = sum_k | d/dx_i[k, u, v]  sum_c out_i[c, h // 2, w // 2] |,

i.e. the absolute input gradient summed over input channels (units of |d out / d pixel|).
``out[:, :, h // 2, w // 2]`` is 0-based; for an even h (or w) it is the lower-right of the
two middle rows (columns). A layer may also output tokens (n, L, C), as a ViT's blocks do:
the gradient is then placed on every channel of the centre image token, the same
``(s // 2, s // 2)`` of their s x s grid in row-major order after the model's prefix (class,
distillation, register) tokens (:func:`centre_token`). Eval-mode BN does not mix samples,
so one batched backward gives every sample's map.

* ``mode="random_input"``: the model as given, eval mode, N(0, 1) inputs from ``seed``.
* ``mode="images"``: the model as given, eval mode, on real images (e.g. the first test
  images, normalised as in training) placed at the centre of a zero canvas of the input size
  (zero = the mean pixel after normalisation; larger images are centre-cropped), so that the
  ERF of a trained network is measured on the data it learned, not on noise.
* ``mode="linearised"``: ReLU and BN pass gradients straight through, max-pools act as
  average-pools (:func:`linearised_copy`); the net is then linear, so the map does not depend
  on the input; one input of ones is used and ``n = 1``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from landscape.activations import (
    CALL, ActivationCapture, check_on_device, eval_mode, module_calls,
)

MODES = ("random_input", "images", "linearised")
CENTRE_CONVENTION = "out[:, :, h // 2, w // 2] (0-based; even sizes: lower-right middle pixel)"
AGGREGATION = (
    "per sample: sum over input channels of |input gradient|; mean_map: mean over samples; "
    "maxima: per-sample max of the map; max_std: population std (ddof=0)"
)
BN_MODES = {"random_input": "eval (running statistics)", "images": "eval (running statistics)",
            "linearised": "identity (straight-through)"}

# Leaves that are already linear in eval mode and are kept as they are.
_LINEAR_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Identity, nn.Flatten,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Dropout, nn.Dropout2d,
)


@dataclass(frozen=True, eq=False)
class ImportanceMaps:
    """Projected-gradient maps of one model.

    mean_map: (H, W) float64 mean map over samples. maxima: (n,) per-sample map maxima.
    max_mean / max_std: mean and population std of ``maxima``. layer: the module whose
    output received the unit gradients; centre: its (row, col). The remaining fields record
    the conventions used (see the module docstring).
    """

    mean_map: np.ndarray
    maxima: np.ndarray
    max_mean: float
    max_std: float
    n: int
    mode: str
    layer: str
    centre: tuple[int, int]
    input_size: int
    seed: int
    centre_convention: str = CENTRE_CONVENTION
    aggregation: str = AGGREGATION
    bn_mode: str = BN_MODES["random_input"]

    @classmethod
    def from_maps(cls, maps: np.ndarray, **fields: object) -> ImportanceMaps:
        """From (n, H, W) per-sample maps; ``fields``: the fields after ``n``."""
        maps = np.asarray(maps, dtype=np.float64)
        maxima = maps.reshape(len(maps), -1).max(axis=1)
        return cls(mean_map=maps.mean(axis=0), maxima=maxima, max_mean=float(maxima.mean()),
                   max_std=float(maxima.std()), n=len(maps), **fields)


def _linearise(module: nn.Module, name: str) -> nn.Module:
    if isinstance(module, (nn.ReLU, nn.modules.batchnorm._BatchNorm)):
        return nn.Identity()
    if isinstance(module, nn.MaxPool2d):
        if module.dilation not in (1, (1, 1)) or module.return_indices:
            raise ValueError(f"cannot linearise {name!r}: MaxPool2d with dilation or return_indices")
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding,
                            ceil_mode=module.ceil_mode, count_include_pad=True)
    if isinstance(module, nn.AdaptiveMaxPool2d):
        if module.return_indices:
            raise ValueError(f"cannot linearise {name!r}: AdaptiveMaxPool2d with return_indices")
        return nn.AdaptiveAvgPool2d(module.output_size)
    if isinstance(module, _LINEAR_LEAVES):
        return module
    raise ValueError(
        f"cannot linearise module {name or '<root>'!r} of type {type(module).__name__}; "
        "supported: ReLU, BatchNorm, MaxPool2d, AdaptiveMaxPool2d and linear layers "
        f"({', '.join(t.__name__ for t in _LINEAR_LEAVES)})"
    )


def linearised_copy(model: nn.Module, *, keep: tuple[str, ...] = ()) -> nn.Module:
    """A deep copy in eval mode, without parameter gradients, in which every ReLU and BatchNorm
    is an identity and every max-pool the average-pool of the same window (gradient 1/k^2 to
    each pixel of the window, padding included). ``model`` is untouched; the leaf modules
    named in ``keep`` stay as they are (e.g. a ReLU that the paper's code does not linearise).

    Leaf modules are swapped; nonlinear *functions* called inside a ``forward`` are not seen.
    """
    linear = copy.deepcopy(model).eval().requires_grad_(False)
    modules = dict(linear.named_modules())
    unknown = [k for k in keep if k not in modules]
    if unknown:
        raise ValueError(f"keep names no module of {type(model).__name__}: {unknown}")
    if not list(linear.children()):
        return _linearise(linear, "")
    for name, module in list(linear.named_modules()):
        if name and name not in keep and not list(module.children()):
            new = _linearise(module, name)
            if new is not module:
                linear.set_submodule(name, new)
    return linear


def last_conv(model: nn.Module, x: Tensor) -> str:
    """Name of the last ``Conv2d`` to run when ``model`` is applied to ``x``, passing over
    convs that see less than an earlier one (a ResNet whose last block has a 1x1 projection
    shortcut runs it after the block's second conv): the deepest conv by analytic r_max
    where the RF analysis can trace the model. A conv that runs several times (CoaT's
    positional conv, shared by a stage's blocks) is named by its last call (``name@k``)."""
    from landscape.receptive_field.analytic import deepest_conv

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d; pass layer= explicitly")
    calls, order = module_calls(model, names, x)  # eval mode, no grad
    last = {name: name if calls[name][0] == 1 else f"{name}{CALL}{calls[name][0] - 1}"
            for name, _ in order}
    try:
        deepest = deepest_conv(model)
    except ValueError:  # not traceable (UnsupportedModelError is one): the order decides
        deepest = None
    return last.get(deepest) or last[order[-1][0]]


def prefix_tokens(model: nn.Module) -> int:
    """How many tokens (class, distillation, register tokens) come before the image tokens of
    ``model``'s token sequences: timm's ``num_prefix_tokens``, 1 for torchvision's
    ``VisionTransformer`` (its ``class_token``), else 0."""
    for module in model.modules():
        n = getattr(module, "num_prefix_tokens", None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
        if isinstance(getattr(module, "class_token", None), nn.Parameter):
            return 1
    return 0


def centre_token(model: nn.Module, layer: str, shape: tuple[int, ...],
                 n: int) -> tuple[int, tuple[int, int]]:
    """For a layer's token output of ``shape`` (n, L, C) on a square input: the index of the
    centre image token and its (row, col) in the s x s token grid, the image tokens being the
    L - p after the :func:`prefix_tokens` p in row-major order (a ViT's patch order)."""
    p = prefix_tokens(model)
    if len(shape) != 3 or shape[0] != n:
        raise ValueError(f"layer {layer!r} outputs shape {shape}: not tokens (n={n}, L, C)")
    side = math.isqrt(max(shape[1] - p, 0))
    if shape[1] - p < 1 or side * side != shape[1] - p:
        raise ValueError(
            f"layer {layer!r} outputs {shape[1]} tokens; after the model's {p} prefix tokens "
            f"they are no square grid of image tokens, so it has no centre token: name a "
            "module whose output is a map (n, C, h, w) or a ViT's token sequence")
    c = side // 2
    return p + c * side + c, (c, c)


def layer_gradient_maps(model: nn.Module, inputs: Tensor, layers: list[str], *,
                        keep_mode: bool = False
                        ) -> dict[str, tuple[Tensor | None, tuple[int, int]]]:
    """Per layer in ``layers``, in forward order (of their first outputs): the (n, H, W)
    float64 map of ``inputs`` (n, C, H, W) for a unit gradient at that layer's centre (module
    docstring; a token output's centre token, :func:`centre_token`) and the centre (row, col).
    One forward for every layer, then one backward per layer. The model runs in eval mode
    (restored afterwards), or with ``keep_mode`` in the mode it is in (dropout in train mode is
    then active, with one mask per sample shared by every layer); no parameter ``.grad`` is
    touched. A layer that does not run is a ValueError; one whose output does not depend on
    the input (EdgeNeXt's positional encoding, a conv on a fixed grid) gets None as its map.
    """
    centres: dict[str, tuple[Tensor, tuple[int, int]]] = {}

    def on_output(name: str, out: Tensor) -> None:
        if out.dim() == 3:  # tokens (n, L, C): the centre token of their grid
            index, (h, w) = centre_token(model, name, tuple(out.shape), len(inputs))
            centres[name] = (out[:, index].clone(), (h, w))
            return
        if out.dim() != 4:
            raise ValueError(f"layer {name!r} must output a map (n, C, h, w) or tokens "
                             f"(n, L, C), got shape {tuple(out.shape)}")
        h, w = out.shape[-2] // 2, out.shape[-1] // 2
        # Copy the centre now: a later in-place op (ReLU(inplace=True)) may overwrite `out`.
        centres[name] = (out[:, :, h, w].clone(), (h, w))

    x = inputs.detach().clone().requires_grad_(True)
    mode = contextlib.nullcontext() if keep_mode else eval_mode(model)
    with mode, torch.enable_grad(), ActivationCapture(model, layers, on_output) as c:
        c.run(x)
    missing = [n for n in layers if n not in centres]
    if missing:
        raise ValueError(f"layers {missing} did not run in the forward pass")
    maps: dict[str, tuple[Tensor | None, tuple[int, int]]] = {}
    for i, name in enumerate(centres):  # forward order: the order of their first outputs
        centre_values, centre = centres[name]
        grad = None
        if centre_values.requires_grad:
            (grad,) = torch.autograd.grad(centre_values.sum(), x, allow_unused=True,
                                          retain_graph=i < len(layers) - 1)
        maps[name] = (None if grad is None else grad.abs().to(torch.float64).sum(dim=1),
                      centre)
    return maps


def _gradient_maps(model: nn.Module, x: Tensor, layer: str) -> tuple[Tensor, tuple[int, int]]:
    m, centre = layer_gradient_maps(model, x, [layer])[layer]
    if m is None:
        raise ValueError(f"layer {layer!r}: its output does not depend on the input (a "
                         "positional encoding's conv?); choose a layer the image reaches")
    return m, centre


def projected_gradient(model: nn.Module, inputs: Tensor, *, layer: str | None = None) -> Tensor:
    """(n, H, W) float64 maps for explicit ``inputs`` (n, C, H, W), one batched backward.

    The model is run in eval mode (restored afterwards); no parameter ``.grad`` is touched.
    """
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError("inputs must be a tensor of shape (n, C, H, W)")
    return _gradient_maps(model, inputs, _resolve_layer(model, inputs, layer))[0]


def _resolve_layer(model: nn.Module, x: Tensor, layer: str | None) -> str:
    if layer is None:
        return last_conv(model, x[:1])
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}")
    if constant_channel_sum(modules[layer]):
        raise ValueError(
            f"layer {layer!r} is a {type(modules[layer]).__name__} whose weight is the same "
            "for every channel (as initialised): the sum of its output over the channels is "
            "a constant, so its map would be rounding noise; name the module before it")
    return layer


def constant_channel_sum(module: nn.Module) -> bool:
    """Whether the sum over channels of ``module``'s output does not depend on its input: a
    LayerNorm over the channels or a GroupNorm (each group sums to zero after normalising)
    whose weight is one value for every channel (or absent)."""
    if not isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return False
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
        return False
    weight = module.weight
    return weight is None or bool((weight == weight.flatten()[0]).all())


def centre_on_canvas(images: Tensor, size: int) -> Tensor:
    """(n, C, h, w) images at the centre of a zero (n, C, size, size) canvas: each side
    zero-padded (the extra pixel of an odd difference after), or centre-cropped when larger."""
    out = images
    for dim in (2, 3):
        extra = size - out.shape[dim]
        if extra >= 0:
            pad = [0, 0, 0, 0]
            pad[(3 - dim) * 2:(3 - dim) * 2 + 2] = [extra // 2, extra - extra // 2]
            out = nn.functional.pad(out, pad)
        else:
            start = -extra // 2
            out = out.narrow(dim, start, size)
    return out


def probe_inputs(model: nn.Module, mode: str, n: int, input_size: int,
                 in_channels: int | None, seed: int, device: str | torch.device,
                 images: Tensor | None = None) -> tuple[Tensor, nn.Module]:
    """(inputs on ``device``, the net to differentiate) for ``mode``: ``n`` N(0, 1) inputs from
    ``seed`` through ``model`` as it is, the first ``n`` of ``images`` centred on a zero canvas
    of ``input_size`` (:func:`centre_on_canvas`), or one input of ones through its
    :func:`linearised_copy`; ``in_channels`` None: the model's."""
    channels = in_channels if in_channels is not None else _infer_in_channels(model)
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    shape = (channels, input_size, input_size)
    if mode == "random_input":
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, *shape, generator=g, dtype=dtype).to(device), model
    if mode == "images":
        if images is None or images.ndim != 4 or len(images) == 0:
            raise ValueError("mode='images' needs images= (a non-empty n x C x H x W tensor)")
        if images.shape[1] != channels:
            raise ValueError(f"images have {images.shape[1]} channels, the model takes "
                             f"{channels}")
        return centre_on_canvas(images[:n].to(dtype), input_size).to(device), model
    return torch.ones(1, *shape, dtype=dtype).to(device), linearised_copy(model)


def _infer_in_channels(model: nn.Module) -> int:
    c = getattr(model, "in_channels", None)
    if isinstance(c, int):
        return c
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError("cannot infer the input channels of the model; pass in_channels=")


def projected_gradient_maps(
    model: nn.Module,
    *,
    input_size: int = 64,
    n_samples: int = 50,
    mode: str = "random_input",
    seed: int = 0,
    layer: str | None = None,
    device: str | torch.device = "cpu",
    in_channels: int | None = None,
    images: Tensor | None = None,
) -> ImportanceMaps:
    """Projected-gradient importance maps of ``model`` (see the module docstring).

    ``input_size``: side of the square input in pixels; ``n_samples``: random inputs
    (``random_input`` mode); ``layer``: module name receiving the unit gradients (default:
    the last Conv2d to run); ``in_channels``: default ``model.in_channels``, else the first registered Conv2d's.
    ``images``: the real images of ``mode="images"`` (the first ``n_samples`` are used).
    ``model`` must already be on ``device``; it is left exactly as it was.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for arg, v in (("input_size", input_size), ("n_samples", n_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {v!r}")
    check_on_device(model, device)
    x, net = probe_inputs(model, mode, n_samples, input_size, in_channels, seed, device,
                          images=images)
    name = _resolve_layer(net, x, layer)
    maps, centre = _gradient_maps(net, x, name)
    return ImportanceMaps.from_maps(maps.cpu().numpy(), mode=mode, layer=name, centre=centre,
                                    input_size=input_size, seed=seed, bn_mode=BN_MODES[mode])
