"""The architecture knobs beyond the RF pool: one frozen spec, read by the builders, the run
identity (through ``model.*`` in the config), the RF analysis and the report.

Every knob defaults to the paper's architecture (None = "the family's own value"), so a config
that sets none builds the same model, with the same module names and initialisation, as before
the knobs existed, and keeps its run hash (defaults are omitted from the hash).

* ``stem`` (ResNet): ``cifar`` = 3x3 stride 1 conv; ``imagenet`` = 7x7 stride 2 conv, then a
  3x3 stride 2 max-pool (``stem_pool``) after the RF pool. ``stem_kernel``, ``stem_stride``,
  ``stem_channels`` override the first conv (ResNet and VGG; channels at width 1).
* ``stage_strides``: one per stage. ResNet: the stride of each stage's first block (4 values,
  default 1, 2, 2, 2). VGG: the kernel and stride of each max-pool between stages (3 values,
  default 2, 2, 2; 1 = no downsampling there, the pool is then the identity).
* ``dilation``: one per stage (4 values, default 1): every 3x3 conv of the stage is dilated by
  it (padding = dilation, so sizes are kept), as torchvision's ``replace_stride_with_dilation``
  and timm's ``output_stride`` do, but independent of the strides.
* ``skips`` (ResNet): False removes the identity additions; the blocks whose shortcut is a 1x1
  projection keep it (``projection="keep"``, same parameters) or lose it (``"drop"``: a plain
  network, fewer parameters).
* ``depths`` / ``widths``: blocks (ResNet) or convs (VGG) per stage, and channels per stage at
  width 1 (ResNet: the blocks' planes; scaled by ``model.width``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

STEMS = ("cifar", "imagenet")
PROJECTIONS = ("keep", "drop")
KNOBS = ("stem", "stem_kernel", "stem_stride", "stem_channels", "stage_strides", "dilation",
         "skips", "projection", "depths", "widths")
LIST_KNOBS = ("stage_strides", "dilation", "depths", "widths")


@dataclass(frozen=True)
class ModelSpec:
    """The knobs of an architecture (module doc); lists are tuples so the spec hashes."""

    stem: str = "cifar"
    stem_kernel: Optional[int] = None
    stem_stride: Optional[int] = None
    stem_channels: Optional[int] = None
    stage_strides: Optional[tuple[int, ...]] = None
    dilation: Optional[tuple[int, ...]] = None
    skips: bool = True
    projection: str = "keep"
    depths: Optional[tuple[int, ...]] = None
    widths: Optional[tuple[int, ...]] = None

    def changed(self) -> dict[str, Any]:
        """The knobs that differ from their defaults, in :data:`KNOBS` order."""
        default = ModelSpec()
        return {k: getattr(self, k) for k in KNOBS if getattr(self, k) != getattr(default, k)}

    def label(self) -> str:
        """``"stem=imagenet,skips=False"``: the changed knobs, "" for the paper's model."""
        return ",".join(f"{k}={list(v) if isinstance(v, tuple) else v}"
                        for k, v in self.changed().items())


def spec_of(model_cfg: Any) -> ModelSpec:
    """The :class:`ModelSpec` of a ``model`` config (any object with the knob fields; missing
    ones take their defaults), its lists as tuples. Checks the values, not the family."""
    values = {}
    for k in KNOBS:
        v = getattr(model_cfg, k, getattr(ModelSpec, k))
        values[k] = tuple(int(x) for x in v) if k in LIST_KNOBS and v is not None else v
    spec = ModelSpec(**values)
    if spec.stem not in STEMS:
        raise ValueError(f"model.stem must be one of {', '.join(STEMS)}, got {spec.stem!r}")
    if spec.projection not in PROJECTIONS:
        raise ValueError(f"model.projection must be one of {', '.join(PROJECTIONS)}, got "
                         f"{spec.projection!r}")
    for k in ("stem_kernel", "stem_stride", "stem_channels"):
        if getattr(spec, k) is not None and getattr(spec, k) < 1:
            raise ValueError(f"model.{k} must be >= 1, got {getattr(spec, k)}")
    for k in LIST_KNOBS:
        v = getattr(spec, k)
        if v is not None and (not v or min(v) < 1):
            raise ValueError(f"model.{k} must be a non-empty list of integers >= 1, got "
                             f"{list(v)}")
    if spec.projection != "keep" and spec.skips:
        raise ValueError("model.projection applies with model.skips=false only (it says what "
                         "happens to the 1x1 projection shortcuts once the skips are gone)")
    return spec


def check_knobs(arch: str, spec: ModelSpec, supported: tuple[str, ...],
                families: dict[str, tuple[str, ...]]) -> None:
    """Refuse a changed knob that ``arch`` does not have, naming the architectures that do."""
    for knob in spec.changed():
        if knob not in supported:
            have = sorted(a for a, ks in families.items() if knob in ks)
            raise ValueError(f"model.{knob} is not a knob of {arch}; architectures that have "
                             f"it: {', '.join(have) or 'none'}")


def stage_values(spec: ModelSpec, knob: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """The per-stage list ``knob`` of ``spec``, or ``default``; a list of the wrong length is
    an error naming the stage count."""
    value = getattr(spec, knob)
    if value is None:
        return default
    if len(value) != len(default):
        raise ValueError(f"model.{knob} needs one value per stage: {len(default)} values "
                         f"(default {list(default)}), got {list(value)}")
    return value

