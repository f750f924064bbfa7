"""A model built for one input size, carried to another.

Most models run at any input size. A model whose token grid, position embedding or
relative-position tables are sized when it is built (timm's ViT, DeiT, Swin, CoAtNet, MaxViT,
EVA, XCiT, ...; torchvision's ViTs) is built for the run's ``data.image_size`` (timm's
``img_size``, torchvision's ``image_size``: :mod:`landscape.models.sources`) and runs at that
size only. Its weights are carried to another size the way its source fine-tunes at another
resolution, by the source's own checkpoint filter (timm: the ``checkpoint_filter_fn`` of the
model's module; torchvision: ``interpolate_embeddings``), which resamples a state_dict's
position embeddings (bicubic) and relative-position tables for the model built at the new
size. Two places need it:

- ``model.weights``: a pretrained file saved at another size (a 224 px ViT fine-tuned on
  32 px images) is loaded through it (:func:`fit_state`, from
  :func:`~landscape.models.weights.load_weights`);
- the resolution stage evaluates a trained checkpoint at other sizes on a copy built for
  each (:func:`at_input_size`).

A family whose filter leaves a table at its old size (timm's LeViT attention biases, BoTNet's
relative positions, CaiT, PiT and ConViT's position embeddings) is refused, naming the keys.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from landscape.fixed_size import built_for

__all__ = ["at_input_size", "fit_state", "mismatches", "shown"]


def _family_filter(net: nn.Module) -> Optional[Callable[..., dict]]:
    """The source's own function that fits a state_dict to a model built for another size:
    torchvision's ``interpolate_embeddings`` for its ViTs, else the ``checkpoint_filter_fn``
    of the model's timm module."""
    if isinstance(net, VisionTransformer):
        return lambda state, net: interpolate_embeddings(net.image_size, net.patch_size, state)
    return getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)


@contextlib.contextmanager
def _source_layout(model: nn.Module) -> Iterator[nn.Module]:
    """The source model as its source built it: an ExternalNet's first conv, wrapped with the
    RF pool (a :class:`~landscape.models.external.PooledConv`), is put back in its place while
    the block runs (the filters read e.g. ``patch_embed.proj.weight``)."""
    net = getattr(model, "net", model)
    name = getattr(model, "first_conv", None)
    wrapped = net.get_submodule(name) if name else None
    if wrapped is None or not hasattr(wrapped, "rf_pool"):
        yield net
        return
    parent, _, child = name.rpartition(".")
    owner = net.get_submodule(parent) if parent else net
    setattr(owner, child, wrapped.conv)
    try:
        yield net
    finally:
        setattr(owner, child, wrapped)


def fit_state(state: Mapping[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor],
                                                                         list[str]]:
    """``state`` (keys of the source's own model: what ``model.source_key`` gives) fitted to
    ``model``, a model built for an input size: when a tensor's shape differs from the
    model's, the state goes through its source's checkpoint filter (module doc), which
    resamples position embeddings and relative-position tables for the model's size. Returns
    the state and the keys whose shape the filter changed to the model's; any other model, or
    a state whose shapes all agree, is returned as it is (mismatches left for the caller to
    name)."""
    state = dict(state)
    to_source = getattr(model, "source_key", lambda k: k)
    own = {to_source(k): v for k, v in model.state_dict().items()}
    differ = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    net = getattr(model, "net", model)
    family = _family_filter(net)
    if not differ or built_for(model) is None or family is None:
        return state, []
    try:
        with _source_layout(model) as net:
            fitted = family(dict(state), net)
    except Exception as e:  # noqa: BLE001 - the source's code: name it, whatever it raised
        raise ValueError(f"the checkpoint filter of {type(net).__module__} could not fit "
                         f"the weights to the model built for {built_for(model)} px "
                         f"({type(e).__name__}: {e})") from None
    changed = [k for k in differ if k in fitted and fitted[k].shape == own[k].shape]
    return fitted, changed


def mismatches(state: Mapping[str, Tensor], model: nn.Module, source: str = "file"
               ) -> list[str]:
    """``missing: ...; unexpected: ...; other shape: ...`` (at most five keys each, source
    keys; a shape reads ``(<source> [..], model [..])``) between ``state`` and ``model``;
    empty when the state loads as it is."""
    to_own = getattr(model, "state_key", lambda k: k)
    to_source = getattr(model, "source_key", lambda k: k)
    mapped = {to_own(k): (k, v) for k, v in state.items()}
    own = model.state_dict()
    missing = [to_source(k) for k in own if k not in mapped]
    unexpected = [src for k, (src, _) in mapped.items() if k not in own]
    shapes = [f"{src} ({source} {list(v.shape)}, model {list(own[k].shape)})"
              for k, (src, v) in mapped.items() if k in own and v.shape != own[k].shape]
    return [f"{what}: {shown(keys)}" for what, keys in
            (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]


def shown(keys: list[str], n: int = 5) -> str:
    """The first ``n`` of ``keys``, comma-separated, then ``(+m more)``."""
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def at_input_size(model: nn.Module, size: int, build: Callable[[int], nn.Module],
                  name: str = "the model") -> tuple[nn.Module, list[str]]:
    """``model`` to run on ``size`` x ``size`` inputs, and the keys whose tables were resampled.

    A model that runs at any size, or was built for ``size``, is returned as it is. A model
    built for another size is rebuilt by ``build(size)`` (without weights; built on the CPU
    with torch's global RNG state restored after, so nothing else's draws move), given
    ``model``'s weights through :func:`fit_state`, its train/eval mode, device and floating
    dtype. ``build`` on the meta device checks shapes only. A weight that cannot be fitted
    is a ValueError naming it."""
    fixed = built_for(model)
    if fixed is None or fixed == size:
        return model, []
    to_source = getattr(model, "source_key", lambda k: k)
    state = {to_source(k): v for k, v in model.state_dict().items()}
    device = next(iter(state.values())).device if state else torch.device("cpu")
    with torch.random.fork_rng(devices=[]), torch.device("meta" if device.type == "meta"
                                                         else "cpu"):
        new = build(size)
    state, changed = fit_state(state, new)
    problems = mismatches(state, new, source=f"{fixed} px")
    if problems:
        raise ValueError(f"{name}, built for {fixed} px, cannot be carried to {size} px: the "
                         "model built for that size does not take its weights ("
                         + "; ".join(problems) + "), and the checkpoint filter of its source "
                         "does not resample them")
    if device.type != "meta":
        dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
        to_own = getattr(new, "state_key", lambda k: k)
        new = new.to(device=device, dtype=dtype)
        new.load_state_dict({to_own(k): v for k, v in state.items()})
    return new.train(model.training), changed
