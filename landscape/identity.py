"""The frozen identity of a run, built once from its config: the one source of every identity
column of its rows, of its folder names and of the model the stages build.

A *cell* is every identity field of the config except the seed; a *run* is (cell, seed). The
cell is named by a readable prefix plus a hash of its canonical config (identity fields that
differ from their defaults, sorted, as OpenLTH does), e.g.
``vgg19-w1-cifar10-pool3-1a2b3c4d5e``; never a timestamp. Fields whose dataclass metadata says
``identity: False`` (where or how to compute, not what) are left out of the hash.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Optional

import torch
from torch import nn

from landscape.data.registry import dataset_info, native_size, resize_label
from landscape.models import PoolSpec, build_model, resolve_pool
from landscape.models.spec import ModelSpec, spec_of
from landscape.models.weights import weights_digest
from landscape.receptive_field import UnsupportedModelError, feature_field

log = logging.getLogger(__name__)

NOT_IDENTITY = {"identity": False}  # dataclass field metadata: not part of the run's identity
HASH_LENGTH = 10


def identity_dict(cfg: Any, *, _prefix: str = "") -> dict[str, Any]:
    """Flat ``{"model.name": ..., ...}`` of identity fields whose value differs from the default.

    Omitting defaults (as OpenLTH does) keeps old run hashes valid when a new field with a
    default is added. Floats are normalised so that ``1`` and ``1.0`` hash alike.
    """
    out: dict[str, Any] = {}
    if not _prefix:
        cfg = canonical(cfg)
    default = type(cfg)()
    for f in fields(cfg):
        if not f.metadata.get("identity", True):
            continue
        value, key = getattr(cfg, f.name), f"{_prefix}{f.name}"
        if is_dataclass(value):
            out.update(identity_dict(value, _prefix=f"{key}."))
            continue
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(
            getattr(default, f.name), float
        ):
            value = float(value)
        if value != getattr(default, f.name):
            out[key] = value
    return out


def canonical(cfg: Any) -> Any:
    """``cfg`` with settings that only restate their default set back to None, so that one
    cell has one hash: the data sizes (:func:`_canonical_data`), and the explicit pool
    overrides (``model.pool_kernel/stride/padding``) when together they restate their level's
    preset: ``pool_level=0 pool_kernel=0`` and ``pool_level=0`` are one cell, as are
    ``pool_level=3 pool_stride=3`` and ``pool_level=3``. A pool that differs from the preset
    keeps its overrides (and its hash). Configs without a pool (no ``model.pool_level``) keep
    their pool settings as they are."""
    cfg = _canonical_data(cfg)
    m = getattr(cfg, "model", None)
    names = ("pool_kernel", "pool_stride", "pool_padding")
    if m is None or not hasattr(m, "pool_level") or all(getattr(m, k) is None for k in names):
        return cfg
    try:
        same = resolve_pool(m.pool_level, *(getattr(m, k) for k in names)) == resolve_pool(
            m.pool_level)
    except ValueError:
        return cfg  # an impossible pool: identify() says why
    return dataclasses.replace(cfg, model=dataclasses.replace(
        m, **{k: None for k in names})) if same else cfg


def _canonical_data(cfg: Any) -> Any:
    """``data.image_size`` equal to the dataset's native size, and ``data.object_size`` of
    ``resize=canvas`` equal to it, set back to None (their defaults mean the native size):
    ``data=cifar10 data.image_size=32`` is the cell of ``data=cifar10``."""
    d = getattr(cfg, "data", None)
    if d is None or not hasattr(d, "object_size"):
        return cfg
    try:
        native = native_size(d)
    except (KeyError, ValueError):
        return cfg  # an unknown dataset: validation says why
    same = {k: None for k in ("image_size", "object_size") if getattr(d, k) == native}
    return dataclasses.replace(cfg, data=dataclasses.replace(d, **same)) if same else cfg


def cell_hash(cfg: Any) -> str:
    """Hash of the canonical cell config: every identity field but the seed. Pretrained
    weights (``model.weights``) enter by their content (``sha256:<hex>``), not their path."""
    ident = {k: v for k, v in identity_dict(cfg).items() if k != "seed"}
    if ident.get("model.weights") is not None:
        ident["model.weights"] = weights_digest(ident["model.weights"])
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_LENGTH]


@dataclass(frozen=True)
class RunIdentity:
    """What a run is. ``seed`` is None for the identity of a whole cell."""

    arch: str
    dataset: str
    width: float
    pool: PoolSpec
    custom_pool: bool  # kernel/stride/padding set explicitly instead of the level's preset
    # analytic r_max of the deepest local features (feature_field), px; None where the RF
    # analysis cannot follow the model (it still trains; its rows carry NA)
    receptive_field: Optional[int]
    image_size: int
    in_channels: int
    num_classes: int
    num_params: int
    cell_hash: str
    seed: Optional[int] = None
    spec: ModelSpec = ModelSpec()  # the architecture's knobs beyond the RF pool
    # the input-size protocol (landscape.data.registry.resize_label): "direct",
    # "down_up:<down_size>" or "canvas:<object size>"
    resize: str = "direct"
    weights: Optional[str] = None  # a local state_dict file the model starts from (its path)
    # the network mixes every position with every other before its head (attention, a
    # token-mixing MLP: analytic.mixes_globally), so its features see the whole input and
    # receptive_field is that of the layers before (a ViT's patch embedding)
    global_mixing: Optional[bool] = False

    @property
    def cell_name(self) -> str:
        """``<arch>-w<width>-<dataset>[-s<size>-<protocol>]-<pool>-<hash>``; the size part only
        for ``data.resize`` other than ``direct`` (e.g. ``digits-s48-canvas32``,
        ``cifar10-s32-downup16``), so the folders of existing runs keep their names.
        Characters of the arch other than letters, digits, ``.``, ``_`` and ``-`` become ``-``
        (``torchvision:resnet34`` -> ``torchvision-resnet34``); the ``arch`` column keeps the
        full name."""
        p = self.pool
        pool = f"poolk{p.kernel}s{p.stride}p{p.padding}" if self.custom_pool else f"pool{p.level}"
        size = ""
        if self.resize != "direct":
            kind, _, n = self.resize.partition(":")
            size = f"-s{self.image_size}-{kind.replace('_', '')}{n}"
        arch = re.sub(r"[^A-Za-z0-9._-]", "-", self.arch)
        return f"{arch}-w{self.width:g}-{self.dataset}{size}-{pool}-{self.cell_hash}"

    @property
    def run_name(self) -> str:
        if self.seed is None:
            raise ValueError("a cell identity has no run name; use with_seed(seed)")
        return f"seed={self.seed}"

    @property
    def run_id(self) -> str:
        """``<cell>/seed=<s>`` for a run, the cell name for a cell."""
        return self.cell_name if self.seed is None else f"{self.cell_name}/{self.run_name}"

    def with_seed(self, seed: Optional[int]) -> RunIdentity:
        return dataclasses.replace(self, seed=seed)

    def columns(self) -> dict[str, Any]:
        """The identity columns of this run's (or cell's) rows (``landscape.results``)."""
        p = self.pool
        return {"run_id": self.run_id, "arch": self.arch, "dataset": self.dataset,
                "pool_level": p.level, "pool_kernel": p.kernel, "pool_stride": p.stride,
                "pool_padding": p.padding, "receptive_field": self.receptive_field,
                "width": self.width, "seed": self.seed,
                "arch_variant": self.spec.label() or None,
                "image_size": self.image_size, "resize": self.resize,
                "global_mixing": self.global_mixing}

    def meta_batch(self, n: int) -> torch.Tensor:
        """An (n, channels, size, size) input batch on the meta device: shapes only."""
        return torch.empty(n, self.in_channels, self.image_size, self.image_size,
                           device="meta")

    def build_model(self) -> nn.Module:
        """A new model of this identity, initialised from torch's global RNG, then from its
        pretrained ``weights`` if it has them."""
        return build_model(self.arch, self.pool, num_classes=self.num_classes,
                           in_channels=self.in_channels, width=self.width, spec=self.spec,
                           weights=self.weights, image_size=self.image_size)


@functools.lru_cache(maxsize=256)
def _model_facts(arch: str, pool: PoolSpec, width: float, num_classes: int, in_channels: int,
                 image_size: int, spec: ModelSpec = ModelSpec(), weights: str | None = None,
                 digest: str | None = None) -> tuple[int | None, bool | None, int]:
    """(analytic RF of the deepest local features at the input size, whether the network then
    mixes globally, parameter count) of a model built on the meta device (no memory, no
    init); building it checks the input size and the keys and shapes of ``weights``
    (``digest``, its content hash, keys the cache). Cached: a grid asks once per cell. A
    model the RF analysis cannot follow (an LSTM over tokens, ``F.fold``) has no RF: None,
    with a warning naming the op, and it still trains."""
    with torch.device("meta"):
        model = build_model(arch, pool, num_classes=num_classes, in_channels=in_channels,
                            width=width, input_size=image_size, spec=spec, weights=weights)
    params = sum(p.numel() for p in model.parameters())
    try:
        return (*feature_field(model, image_size), params)
    except UnsupportedModelError as exc:
        log.warning("%s: its receptive_field column is left empty: %s", arch, exc)
        return None, None, params


def identify(cfg: Any) -> RunIdentity:
    """The identity of ``cfg`` (a ``RunConfig``: ``model``, ``data``, ``seed`` and the identity
    fields). Resolves the pool once and builds the model once, on the meta device (no memory,
    no init), to check the input size and read the analytic receptive field: an impossible
    pool for the data is an error here, before anything is written."""
    m = canonical(cfg).model
    pool = resolve_pool(m.pool_level, m.pool_kernel, m.pool_stride, m.pool_padding)
    info = dataset_info(cfg.data)
    spec = spec_of(m)
    weights = getattr(m, "weights", None)
    rf, mixing, num_params = _model_facts(
        m.name, pool, float(m.width), info.num_classes, info.in_channels, info.image_size, spec,
        weights, weights_digest(weights) if weights is not None else None)
    custom = (m.pool_kernel, m.pool_stride, m.pool_padding) != (None, None, None)
    return RunIdentity(
        arch=m.name, dataset=cfg.data.name, width=float(m.width), pool=pool, custom_pool=custom,
        receptive_field=rf, image_size=info.image_size, in_channels=info.in_channels,
        num_classes=info.num_classes, num_params=num_params, cell_hash=cell_hash(cfg),
        seed=cfg.seed, spec=spec, resize=resize_label(cfg.data), weights=weights,
        global_mixing=mixing,
    )


def default_params(identity: RunIdentity) -> int:
    """Parameter count of ``identity``'s architecture without its knobs (the paper's model at
    the same width, pool, classes and channels): what a knob's parameter change is relative
    to."""
    return _model_facts(identity.arch, identity.pool, identity.width, identity.num_classes,
                        identity.in_channels, identity.image_size)[2]


def warn_parameter_change(identity: RunIdentity) -> None:
    """A warning when the model knobs change the parameter count (the RF study's one knob, the
    pool, does not): once per process for each knobs and architecture, not once per run."""
    if identity.spec.changed():
        _warn_once(identity.spec.label(), identity.arch, default_params(identity),
                   identity.num_params)


@functools.lru_cache(maxsize=None)
def _warn_once(knobs: str, arch: str, base: int, params: int) -> None:
    if base != params:
        log.warning("model knobs %s change the parameter count of %s: %s -> %s (%+.2f%%)",
                    knobs, arch, f"{base:,}", f"{params:,}", 100 * (params / base - 1))
