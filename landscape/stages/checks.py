"""Checks of stage settings shared by the stages: numbers, counts and the protocol. Each
raises a ValueError naming the setting and what it allows (before any file is written)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

PROTOCOLS = ("default", "paper")  # ours | the paper's released procedure (docs/paper-protocol.md)


def check_protocol(group: str, config: Any, *, requires: Mapping[str, Any] = {},
                   unused: Sequence[str] = ()) -> None:
    """``<group>.protocol`` must be one of :data:`PROTOCOLS`. With ``paper`` (the released
    procedure), every field in ``requires`` must hold its value there, and the fields in
    ``unused`` (settings of our procedure that the paper's has no use for) their defaults:
    rows labelled ``paper`` are never made with other settings."""
    protocol = getattr(config, "protocol", None)
    if protocol not in PROTOCOLS:
        raise ValueError(f"{group}.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol != "paper":
        return
    default = type(config)()
    wrong = [f"{group}.{k}={v!r} (got {getattr(config, k)!r})" for k, v in requires.items()
             if getattr(config, k) != v]
    wrong += [f"{group}.{k} left at {getattr(default, k)!r} (got {getattr(config, k)!r}: "
              "protocol=paper does not use it)" for k in unused
              if getattr(config, k) != getattr(default, k)]
    if wrong:
        raise ValueError(f"{group}.protocol=paper is the released procedure, which needs "
                         f"{'; '.join(wrong)}. Use the preset {group}=paper without overriding "
                         f"these fields, or set {group}.protocol=default to measure with other "
                         "settings")


def check_number(name: str, value: Any, *, above: float, strict: bool = True,
                 optional: bool = False) -> None:
    """``value`` (the setting ``name``) must be a finite number ``> above`` (``>=`` unless
    ``strict``), or None when ``optional``."""
    if value is None and optional:
        return
    op = ">" if strict else ">="
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value > above if strict else value >= above))
    if not ok:
        raise ValueError(f"{name} must be a finite number {op} {above:g}"
                         f"{' or null' if optional else ''}, got {value!r}")


def check_counts(group: str, config: Any, names: Sequence[str], minimum: int = 1) -> None:
    """Each of the integer settings ``<group>.<name>`` must be >= ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{group}.{name} must be >= {minimum}, got {value}")
