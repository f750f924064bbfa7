"""torchvision's classification models, built on the meta device for receptive-field analysis.

Built on ``torch.device("meta")``: parameters have shapes but no memory, so even
``regnet_y_128gf`` or ``vit_h_14`` costs nothing to build, and the RF analysis needs shapes only.
"""

from __future__ import annotations

import difflib
import importlib
from contextlib import contextmanager
from typing import Iterator

import torch
import torchvision
from torch import nn
from torchvision.models import regnet

from landscape.fixed_size import BUILT_FOR
from landscape.registry import import_modules

# torchvision builds these with auxiliary classifiers / a weight init that the RF table does
# not need; the aux heads run in training mode only and are left out.
_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
           "inception_v3": {"aux_logits": False, "init_weights": False}}


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models.list_models``)."""
    return list(torchvision.models.list_models(module=torchvision.models))


@contextmanager
def _regnet_widths_on_cpu() -> Iterator[None]:
    """RegNet computes its stage widths with tensors and reads them back (``.tolist()``),
    which meta tensors cannot do: that computation runs on the CPU."""
    original = regnet.BlockParams.__dict__["from_init_params"]

    def from_init_params(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kwargs)

    regnet.BlockParams.from_init_params = classmethod(from_init_params)
    try:
        yield
    finally:
        regnet.BlockParams.from_init_params = original


def torchvision_model(name: str, *, device: str | torch.device = "meta",
                      num_classes: int | None = None, img_size: int | None = None) -> nn.Module:
    """torchvision classification model ``name`` without weights, in eval mode, on ``device``
    (meta by default); ``num_classes`` None keeps its ImageNet head. ``img_size``: a model
    whose builder takes ``image_size`` (the ViTs: their position table is fixed when they are
    built) or ``input_size`` (MaxViT) is built for that input size; any other as it is.
    Raises ValueError naming close names (or all of them) for an unknown name."""
    names = torchvision_classifiers()
    if name not in names:
        raise ValueError(f"unknown torchvision classification model {name!r}"
                         f"{_close(name, names) or '; valid: ' + ', '.join(names)}")
    kwargs = dict(_KWARGS.get(name, {}))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with torch.device(device), _regnet_widths_on_cpu():
        # the ViTs take image_size, MaxViT input_size (its windows must tile every stage)
        for arg, value in ((("image_size", img_size), ("input_size", (img_size, img_size)))
                           if img_size is not None else ()):
            try:
                model = torchvision.models.get_model(name, weights=None, **{arg: value},
                                                     **kwargs)
                setattr(model, BUILT_FOR, img_size)
                return model.eval()
            except TypeError as e:  # no such argument
                if arg not in str(e):
                    raise
            except (AssertionError, ValueError) as e:
                raise ValueError(f"torchvision:{name} cannot be built for a {img_size} px "
                                 f"input ({type(e).__name__}: {str(e).splitlines()[0]})"
                                 ) from None
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    return model.eval()


SOURCES = ("torchvision", "timm")


def _close(name: str, names: list[str]) -> str:
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(near)}?" if near else ""


def timm_model(name: str, *, num_classes: int | None = None, in_channels: int = 3,
               device: str | torch.device = "meta", img_size: int | None = None) -> nn.Module:
    """timm model ``name`` without pretrained weights, in eval mode, on ``device`` (timm is
    an optional extra: ``pip install 'rf-landscape[timm]'``). ``img_size``: build a model
    whose token grid or attention is fixed at construction (ViT, Swin, CaiT, BoTNet, HaloNet,
    CoAtNet, LeViT, ...) for that input size, as timm does to fine-tune at another resolution
    (the same layers; position tables sized for it); a model without that argument (a CNN)
    is built as it is, whatever the size."""
    try:
        import timm
    except ModuleNotFoundError:
        raise ValueError(f"model 'timm:{name}' needs timm, which is not installed; install the "
                         "extra: pip install 'rf-landscape[timm]'") from None
    names = timm.list_models()
    if name not in names:
        raise ValueError(f"unknown timm model {name!r}{_close(name, names)} (timm.list_models() "
                         f"has {len(names)})")
    kwargs: dict[str, object] = {"in_chans": in_channels}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with torch.device(device):
        if img_size is not None:
            try:
                model = timm.create_model(name, pretrained=False, img_size=img_size, **kwargs)
                setattr(model, BUILT_FOR, img_size)
                return model.eval()
            except TypeError as e:  # no img_size argument: any input size goes
                if "img_size" not in str(e):
                    raise
            except (AssertionError, ValueError) as e:
                raise ValueError(f"timm:{name} cannot be built for a {img_size} px input "
                                 f"({type(e).__name__}: {e})") from None
        return timm.create_model(name, pretrained=False, **kwargs).eval()


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for mod in model.modules():
        for child_name, child in mod.named_children():
            if isinstance(child, nn.Conv2d):
                return mod, child_name, child
    raise ValueError(f"{type(model).__name__} has no Conv2d whose input channels could be set")


def with_in_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """``model`` with its first Conv2d (in definition order) taking ``in_channels`` channels:
    the same kernel, stride, padding, dilation, groups (for a grouped first conv the channel
    count must stay divisible), bias and output channels. Changes ``model`` in place."""
    parent, name, conv = _first_conv(model)
    if conv.in_channels == in_channels:
        return model
    if conv.groups != 1:
        raise ValueError(f"cannot set in_channels={in_channels}: the first conv of "
                         f"{type(model).__name__} is grouped (groups={conv.groups})")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, device=conv.weight.device,
                    dtype=conv.weight.dtype)
    setattr(parent, name, new)
    return model


def user_model(spec: str) -> nn.Module:
    """``module:function``: import ``module`` and call ``function()`` (no arguments)."""
    module, _, attr = spec.partition(":")
    try:
        import_modules([module], field="model.name")
    except ModuleNotFoundError as e:
        raise ValueError(f"{e}; model sources: {', '.join(s + ':<name>' for s in SOURCES)} "
                         "or <module>:<function>") from None
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ValueError(f"model.name={spec!r}: module '{module}' has no function '{attr}'")
    model = fn()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.name={spec!r}: {attr}() returned {type(model).__name__}, not an "
                         "nn.Module")
    return model.eval()


def is_external(name: str) -> bool:
    """A model name with a source (``torchvision:``, ``timm:``, ``module:function``) rather
    than one of the registered architectures."""
    return ":" in name


def external_model(name: str, *, num_classes: int | None = None, in_channels: int = 3,
                   device: str | torch.device = "meta", img_size: int | None = None
                   ) -> nn.Module:
    """The model a source-qualified name stands for, without weights, in eval mode:
    ``torchvision:<name>`` (:func:`torchvision_model`), ``timm:<name>`` (:func:`timm_model`)
    or ``<module>:<function>`` (the user's builder, called with no arguments; it is built
    where it builds). ``num_classes`` None keeps the model's own head; ``in_channels`` other
    than 3 replaces the first conv (:func:`with_in_channels`); ``img_size``: a timm or
    torchvision model whose size is fixed at construction is built for it
    (:func:`timm_model`, :func:`torchvision_model`)."""
    source, _, rest = name.partition(":")
    if not source or not rest:
        raise ValueError(f"model.name={name!r}: expected torchvision:<name>, timm:<name> or "
                         "<module>:<function>")
    if source == "timm":
        return timm_model(rest, num_classes=num_classes, in_channels=in_channels,
                          device=device, img_size=img_size)
    if source == "torchvision":
        model = torchvision_model(rest, device=device, num_classes=num_classes,
                                  img_size=img_size)
    else:
        model = user_model(name)
    return with_in_channels(model, in_channels) if in_channels != 3 else model
