"""The receptive-field knob: one max-pool placed right after the first convolution.

This is the only place that knows the pool presets (DESIGN.md §2):

* level 0: no pool (identity);
* level 1: ``MaxPool2d(kernel_size=2, stride=1)``;
* level L >= 2: ``MaxPool2d(kernel_size=L + 1, stride=L, padding=1)``.

Explicit ``kernel`` / ``stride`` / ``padding`` override the preset field by field, so a sweep
that varies the kernel alone (fixed stride) is one config line. A max-pool has no parameters,
so the parameter count of a model never depends on the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

MAX_PRESET_LEVEL = 16


@dataclass(frozen=True)
class PoolSpec:
    """Resolved pool settings. ``kernel == 0`` means no pool (identity)."""

    level: int
    kernel: int
    stride: int
    padding: int

    @property
    def is_identity(self) -> bool:
        return self.kernel == 0

    def describe(self) -> str:
        if self.is_identity:
            return f"pool level {self.level} (no pool)"
        return (
            f"pool level {self.level} (kernel {self.kernel}, stride {self.stride}, "
            f"padding {self.padding})"
        )


def pool_preset(level: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a preset level; kernel 0 means no pool."""
    if not isinstance(level, int) or isinstance(level, bool) or level < 0:
        raise ValueError(f"pool_level must be an integer >= 0, got {level!r}")
    if level > MAX_PRESET_LEVEL:
        raise ValueError(f"pool_level must be in 0..{MAX_PRESET_LEVEL}, got {level}")
    if level == 0:
        return 0, 1, 0
    if level == 1:
        return 2, 1, 0
    return level + 1, level, 1


def resolve_pool(
    level: int = 0,
    kernel: int | None = None,
    stride: int | None = None,
    padding: int | None = None,
) -> PoolSpec:
    """Combine a preset level with explicit overrides and validate the result.

    With ``level=0`` and an explicit ``kernel``, stride defaults to 1 and padding to 0.
    """
    k, s, p = pool_preset(level)
    if kernel is not None:
        if kernel < 0:
            raise ValueError(f"pool_kernel must be >= 0 (0 = no pool), got {kernel}")
        k = kernel
    if stride is not None:
        if stride < 1:
            raise ValueError(f"pool_stride must be >= 1, got {stride}")
        s = stride
    if padding is not None:
        if padding < 0:
            raise ValueError(f"pool_padding must be >= 0, got {padding}")
        p = padding
    if k == 0:
        if level != 0:
            raise ValueError(f"pool_kernel=0 disables the pool, but pool_level={level} names a "
                             "pooled preset; set pool_level=0 for no pool, or a kernel >= 1")
        if (stride is not None and stride != 1) or (padding is not None and padding != 0):
            raise ValueError(
                "pool_stride/pool_padding were set but the pool is disabled "
                f"(pool_level={level}, pool_kernel={kernel}); set pool_kernel >= 1"
            )
        return PoolSpec(level=level, kernel=0, stride=1, padding=0)
    if p > k // 2:
        raise ValueError(
            f"pool_padding must be at most half of pool_kernel (torch's MaxPool2d rule): "
            f"kernel {k}, padding {p}"
        )
    return PoolSpec(level=level, kernel=k, stride=s, padding=p)


def make_rf_pool(spec: PoolSpec) -> nn.Module:
    """The module inserted after the first conv: ``nn.Identity`` or ``nn.MaxPool2d``."""
    if spec.is_identity:
        return nn.Identity()
    return nn.MaxPool2d(kernel_size=spec.kernel, stride=spec.stride, padding=spec.padding)
