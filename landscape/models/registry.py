"""Model registry: ``@register_model`` / ``create_model`` / ``list_models``."""

from __future__ import annotations

import functools
from typing import Callable

import torch

from landscape.models.base import RFNet, check_input_size
from landscape.models.caches import CACHES, recompute_parameter_caches
from landscape.models.external import build_external
from landscape.models.sources import is_external
from landscape.models.rf_pool import PoolSpec, resolve_pool
from landscape.models.spec import ModelSpec, check_knobs
from landscape.models.weights import load_weights
from landscape.registry import Registry, UnknownNameError

MODELS: Registry[Callable[..., RFNet]] = Registry(
    "model", hint="a model of your own: list the module that registers it in imports=[...]")
MODEL_KNOBS: dict[str, tuple[str, ...]] = {}  # architecture -> the ModelSpec knobs it has


def register_model(name: str, *, knobs: tuple[str, ...] = ()
                   ) -> Callable[[Callable[..., RFNet]], Callable[..., RFNet]]:
    """Decorator: register a builder ``fn(*, num_classes, in_channels, pool, width) -> RFNet``;
    with ``knobs`` (names of :class:`~landscape.models.spec.ModelSpec` fields) it also takes
    ``spec`` and every other knob is refused for it."""
    def deco(fn: Callable[..., RFNet]) -> Callable[..., RFNet]:
        MODELS.register(name)(fn)
        MODEL_KNOBS[name] = tuple(knobs)
        return fn
    return deco


def is_builtin(name: str) -> bool:
    """Whether ``name`` is one of landscape's own architectures (registered by
    ``landscape.models``), not a user's, timm's or torchvision's."""
    return name in MODELS and MODELS.get(name).__module__.startswith("landscape.models.")


def list_models() -> list[str]:
    return MODELS.names()


def _builder(name: str) -> Callable[..., RFNet]:
    try:
        return MODELS.get(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{e}; or any torchvision:<name> / timm:<name> CNN") from None


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    pool_level: int = 0,
    width: float = 1.0,
    pool_kernel: int | None = None,
    pool_stride: int | None = None,
    pool_padding: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    spec: ModelSpec | None = None,
) -> RFNet:
    """Build a registered architecture with the RF pool after its first convolution, and the
    knobs of ``spec`` (:mod:`landscape.models.spec`; None: the paper's architecture).

    ``pool_kernel/stride/padding`` override the preset of ``pool_level`` field by field.
    With ``input_size`` the model is checked at once for a pool that shrinks the feature map
    to nothing (:func:`~landscape.models.base.check_input_size`).
    """
    pool = resolve_pool(pool_level, pool_kernel, pool_stride, pool_padding)
    return build_model(name, pool, num_classes=num_classes, in_channels=in_channels,
                       width=width, input_size=input_size, spec=spec)


def build_model(
    name: str,
    pool: PoolSpec,
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    input_size: int | tuple[int, int] | None = None,
    spec: ModelSpec | None = None,
    weights: str | None = None,
    image_size: int | None = None,
) -> RFNet:
    """:func:`create_model` with an already resolved pool (see ``landscape.identity``).

    ``name`` is a registered architecture or ``torchvision:<name>`` / ``timm:<name>``
    (:mod:`landscape.models.external`: no knobs, width 1). ``weights``: a local state_dict
    file loaded into the model (:mod:`landscape.models.weights`; on the meta device its keys
    and shapes are checked only). ``image_size`` (default: a square ``input_size``): the input
    a timm or torchvision model whose token grid is fixed at construction (a ViT) is built
    for; every other model is the same at any size. A module that caches a tensor derived
    from its parameters (timm's attention-bias tables) recomputes it on every call
    (:func:`~landscape.models.caches.recompute_parameter_caches`)."""
    external = is_external(name)
    builder = None if external else _builder(name)
    spec = spec or ModelSpec()
    if external and spec.changed():
        raise ValueError(f"model.{next(iter(spec.changed()))} is not a knob of {name}: "
                         "torchvision/timm models are built as their source defines them; the "
                         "knobs apply to the registered architectures")
    check_knobs(name, spec, MODEL_KNOBS.get(name, ()), MODEL_KNOBS)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    if external:
        if width != 1:
            raise ValueError(f"model.width={width:g}: {name} is built at its source's own width;"
                             " model.width (a channel multiplier) must be 1 for torchvision/timm"
                             " models")
        if image_size is None and isinstance(input_size, int):
            image_size = input_size
        model = build_external(name, pool, num_classes=num_classes, in_channels=in_channels,
                               image_size=image_size)
    else:
        knobs = {"spec": spec} if MODEL_KNOBS.get(name) else {}
        model = builder(num_classes=num_classes, in_channels=in_channels, pool=pool,
                        width=width, **knobs)
    model.spec = spec
    recompute_parameter_caches(model)  # a cached attention-bias table would go stale
    if weights is not None:
        load_weights(model, weights, name)
    if input_size is not None:
        check_input_size(model, input_size)
    return model


@functools.lru_cache(maxsize=None)
def has_parameter_caches(name: str) -> bool:
    """Whether the model ``name`` (a registered architecture, or torchvision / timm / user)
    has a module that caches a tensor derived from its parameters
    (:data:`~landscape.models.caches.CACHES`): built once per name on the meta device,
    without its RF pool. True where it cannot be built so (a model that may have one)."""
    try:
        with torch.device("meta"):
            model = build_model(name, resolve_pool(0), num_classes=2)
    except Exception:  # noqa: BLE001 - unknown: count it as one that may cache
        return True
    return any(method in vars(m) for m in model.modules()  # patched by build_model
               for method, _ in CACHES)
