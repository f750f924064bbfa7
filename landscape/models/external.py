"""Any torchvision or timm CNN with the RF pool right after its first convolution.

``build_external("torchvision:resnet34", pool, num_classes=10, in_channels=1)`` builds the
source's model without weights (:mod:`landscape.models.sources`), sets its head to
``num_classes`` and its first conv to ``in_channels``, and puts the RF pool
(:func:`~landscape.models.rf_pool.make_rf_pool`) right after the first convolution *in
execution order* (found by a forward pass on the meta device), before its normalisation and
activation, as :mod:`landscape.models.vgg` does: that conv becomes a :class:`PooledConv`
(``conv`` then ``rf_pool``). Normalisation and activation are pointwise, so the analytic RF is
the same as with the pool after the whole conv block (as :mod:`landscape.models.resnet` does).
A max-pool has no parameters: the parameter count is the same at every pool level.

The result, an :class:`ExternalNet`, holds the model as ``net`` and is an
:class:`~landscape.models.base.RFNet` (``pool_spec``, ``in_channels``, ``spec``), so the run
identity, the stages and the input-size check treat it like the built-in architectures.

Refused, with the reason, at a pool level that inserts a pool: a model whose first
parametrised layer to run is not a Conv2d (NaFlexViT's Linear patch embedding), one with
attention layers (a transformer: the RF pool would change its token count), one whose first
conv runs more than once, and one that no longer runs with a pooled map after it. At pool
level 0 (no pool) such a model is built as its source defines it (RepVGG, DLA, a ViT at its
own input size, a NaFlexViT: ``first_conv`` None, nothing wrapped), so it can be trained and
measured beside the CNNs at their base RF; a torchvision model whose first layer is not a
conv is refused there for other input channels than 3 (timm sets them itself).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from landscape.fixed_size import built_for
from landscape.models.base import RFNet
from landscape.models.rf_pool import PoolSpec, make_rf_pool, resolve_pool
from landscape.models.sources import SOURCES, external_model

PROBE_SIZE = 224  # px: the meta-device forward that finds the first conv (ImageNet size)


class PooledConv(nn.Sequential):
    """The model's first convolution followed by the RF pool."""

    def __init__(self, conv: nn.Conv2d, pool: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.rf_pool = pool


class ExternalNet(RFNet):
    """A torchvision / timm model (``net``) whose first conv (``first_conv``, its name in
    ``net``) is followed by the RF pool; ``first_conv`` None: a model without a first conv at
    pool level 0, as its source builds it."""

    def __init__(self, net: nn.Module, first_conv: str | None, pool: PoolSpec,
                 in_channels: int, source_name: str) -> None:
        super().__init__(pool, in_channels)
        self.net = net
        self.first_conv = first_conv
        self.source_name = source_name

    @property
    def rf_pool(self) -> nn.Module:
        if self.first_conv is None:
            return nn.Identity()
        return self.net.get_submodule(self.first_conv).rf_pool

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def state_key(self, source_key: str) -> str:
        """The key in this model's ``state_dict`` of ``source_key``, a key of the state_dict
        of the source's own model (e.g. torchvision's ``conv1.weight`` is
        ``net.conv1.conv.weight`` here)."""
        prefix = f"{self.first_conv}."
        if self.first_conv is not None and source_key.startswith(prefix):
            source_key = f"{self.first_conv}.conv.{source_key[len(prefix):]}"
        return f"net.{source_key}"

    def source_key(self, key: str) -> str:
        """The inverse of :meth:`state_key`."""
        key = key[len("net."):] if key.startswith("net.") else key
        prefix = f"{self.first_conv}.conv."
        if self.first_conv is not None and key.startswith(prefix):
            key = f"{self.first_conv}.{key[len(prefix):]}"
        return key


def check_source(name: str) -> None:
    """Refuse a ``<module>:<function>`` name: the pipeline cannot set its classes/channels."""
    source = name.partition(":")[0]
    if source not in SOURCES:
        sources = " or ".join(s + ":<name>" for s in SOURCES)
        raise ValueError(
            f"model.name={name!r}: the pipeline builds {sources}"
            " (head and input channels set from the data); a user model enters it registered "
            "with @landscape.models.register_model in a module listed in `imports` "
            "(<module>:<function> is for landscape-rf only)")


def _source_model(name: str, num_classes: int, in_channels: int, device,
                  image_size: int | None = None) -> nn.Module:
    """The source's model without weights, ``num_classes`` outputs; timm sets its input
    channels itself (``in_chans``), torchvision models are built for 3 and changed after; a
    model whose token grid is fixed at construction is built for ``image_size``."""
    timm = name.startswith("timm:")
    return external_model(name, num_classes=num_classes, in_channels=in_channels if timm else 3,
                          device=device, img_size=image_size)


def _attention(model: nn.Module) -> str | None:
    for n, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower():
            return f"{n} ({type(m).__name__})"
    return None


def _refuse(name: str, why: str) -> ValueError:
    return ValueError(f"model.name={name!r} is not a CNN the RF pool can follow: {why}; the RF "
                      "pool goes right after the first convolution of a convolutional network")


def _forward_meta(model: nn.Module, in_channels: int, size: int) -> None:
    with torch.no_grad():
        model(torch.zeros(1, in_channels, size, size, device="meta"))


@functools.lru_cache(maxsize=64)
def first_conv_name(name: str, num_classes: int, pooled: bool = True,
                    image_size: int | None = None) -> str | None:
    """The qualified name of the first Conv2d to run in the model ``name`` (built on the meta
    device and run once on a 224x224 input, or on the ``image_size`` a transformer was built
    for), after checking, when ``pooled``, that the RF pool can follow it (module doc).
    ``ValueError`` naming the reason otherwise. Not ``pooled``: None where the first layer
    with parameters to run is not a Conv2d."""
    model = _source_model(name, num_classes, 3, "meta", image_size)
    attention = _attention(model) if pooled else None
    if attention:
        raise _refuse(name, f"it has attention layers ({attention})")
    names = {m: n for n, m in model.named_modules()}
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, i, o: order.append(m))
               for m in model.modules() if not list(m.children())]
    size = built_for(model) or PROBE_SIZE
    try:
        _forward_meta(model, 3, size)
    except Exception as e:  # noqa: BLE001 - the model's own failure, reported with its name
        raise ValueError(f"model.name={name!r}: a forward pass of a {size}x{size} "
                         f"image on the meta device failed ({type(e).__name__}: {e})") from None
    finally:
        for h in handles:
            h.remove()
    first = next((m for m in order if any(True for _ in m.parameters(recurse=False))), None)
    if not isinstance(first, nn.Conv2d):
        if not pooled:
            return None
        what = f"{names[first]} ({type(first).__name__})" if first is not None else "nothing"
        raise _refuse(name, f"the first layer with parameters to run is {what}, not a Conv2d")
    conv_name = names[first]
    if not pooled:
        return conv_name
    if order.count(first) > 1:
        raise _refuse(name, f"its first conv {conv_name} runs {order.count(first)} times")
    _insert_pool(model, conv_name, make_rf_pool(resolve_pool(2)))
    try:
        _forward_meta(model, 3, size)
    except Exception as e:  # noqa: BLE001
        raise _refuse(name, f"it does not run with a pooled map after {conv_name} "
                      f"({type(e).__name__}: {e})") from None
    return conv_name


def _insert_pool(model: nn.Module, conv_name: str, pool: nn.Module) -> None:
    parent_name, _, child = conv_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, child, PooledConv(getattr(parent, child), pool))


def _set_in_channels(model: nn.Module, conv_name: str, in_channels: int) -> None:
    """Replace the conv ``conv_name`` by one taking ``in_channels`` (same kernel, stride,
    padding, dilation, bias, output channels; freshly initialised as torch does)."""
    conv = model.get_submodule(conv_name)
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ValueError(f"cannot set in_channels={in_channels}: the first conv {conv_name} is "
                         f"grouped (groups={conv.groups})")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    parent_name, _, child = conv_name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def build_external(name: str, pool: PoolSpec, *, num_classes: int, in_channels: int,
                   image_size: int | None = None) -> ExternalNet:
    """``name`` (``torchvision:<name>`` / ``timm:<name>``) without weights, on the current
    default device, for ``num_classes`` / ``in_channels``, with the RF pool ``pool`` right
    after its first conv (module doc). Initialised from torch's global RNG, in train mode.
    ``image_size``: a model whose token grid is fixed at construction (a ViT) is built for
    that input size (:mod:`landscape.models.sources`)."""
    check_source(name)
    conv_name = first_conv_name(name, num_classes, pooled=not pool.is_identity,
                                image_size=image_size)
    model = _source_model(name, num_classes, in_channels, torch.get_default_device(),
                          image_size)
    # timm sets the input channels itself (in_chans), also where its first conv sees others
    # (TResNet's, after a 4 x 4 space-to-depth, takes 16 for one input channel)
    if conv_name is None:  # pool level 0, no first conv: the source's model as it is
        if not name.startswith("timm:") and in_channels != 3:
            raise ValueError(f"model.name={name!r}: cannot set in_channels={in_channels}: its "
                             "first layer with parameters is not a Conv2d")
        return ExternalNet(model.train(), None, pool, in_channels, name)
    if not name.startswith("timm:"):
        _set_in_channels(model, conv_name, in_channels)
    _insert_pool(model, conv_name, make_rf_pool(pool))
    return ExternalNet(model.train(), conv_name, pool, in_channels, name)
