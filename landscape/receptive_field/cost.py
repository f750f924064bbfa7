"""Parameter count and FLOPs of a model at an input size, without computing anything.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on a forward pass of one
meta-device image (shapes only, no memory, no arithmetic): 2 per multiply-accumulate of
convolutions, matrix products and attention; element-wise ops, normalisation and pooling are
not counted (the convention of fvcore and of most papers' "FLOPs" = 2 x MACs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from landscape.receptive_field.graph import input_channels

FLOPS_CONVENTION = ("2 x multiply-accumulates of conv / linear / matmul / attention, one image; "
                    "element-wise ops, normalisation and pooling not counted")


@dataclass(frozen=True)
class ModelCost:
    """``params``: every parameter (trainable and frozen); ``flops``: one forward pass of one
    ``in_channels`` x ``input_size`` image (module doc for what is counted)."""

    params: int
    flops: int
    input_size: tuple[int, int]
    in_channels: int

    @property
    def macs(self) -> int:
        return self.flops // 2


def meta_clone(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are empty meta tensors of the same
    shapes and dtypes: no storage is copied, and nothing a forward or a trace does to the
    copy's Python state reaches ``model`` (timm's LeViT caches its attention biases per
    device: an fx trace left proxies there, and the next trace of the model failed)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"),
                                   requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def meta_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it is on the meta device already, else :func:`meta_clone`."""
    if all(p.device.type == "meta" for p in model.parameters()):
        return model
    return meta_clone(model)


def meta_input(model: nn.Module, input_size: int | tuple[int, int],
               in_channels: int | None = None) -> tuple[nn.Module, torch.Tensor]:
    """(:func:`meta_copy` of ``model``, one meta-device image of ``input_size`` pixels and
    ``in_channels`` channels, by default the model's:
    :func:`~landscape.receptive_field.graph.input_channels`; in the dtype of the model's
    parameters)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if in_channels is None:
        in_channels = input_channels(model)
        if in_channels is None:
            raise ValueError(f"{type(model).__name__} has no Conv2d; pass in_channels")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return meta_copy(model), torch.empty(1, in_channels, h, w, device="meta", dtype=dtype)


def model_cost(model: nn.Module, input_size: int | tuple[int, int],
               in_channels: int | None = None) -> ModelCost:
    """:class:`ModelCost` of ``model`` (left unchanged; a copy is moved to the meta device when
    it holds real tensors) for one image of ``input_size`` pixels; ``in_channels`` defaults to
    the model's (:func:`~landscape.receptive_field.graph.input_channels`)."""
    meta, image = meta_input(model, input_size, in_channels)
    training = meta.training
    grads = [(p, p.requires_grad) for p in meta.parameters()]
    meta.eval()
    try:
        # no parameter asks for gradients: the counter's module tracker registers gradient
        # hooks on module inputs that do, and fails on a parameter's view made under no_grad
        # (PiT hands its expanded class token to a module)
        for p, _ in grads:
            p.requires_grad_(False)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta(image)
    finally:
        meta.train(training)
        for p, flag in grads:
            p.requires_grad_(flag)
    return ModelCost(params=sum(p.numel() for p in model.parameters()),
                     flops=int(counter.get_total_flops()), input_size=tuple(image.shape[-2:]),
                     in_channels=image.shape[1])
