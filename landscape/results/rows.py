"""Parsing the ``rows.csv`` of stage units into frames of the schema's dtypes: one unit
(:func:`read_rows`), or many at once (:func:`read_units`, what ``load`` uses: one parse and one
dtype conversion for every unit of one header; on a root of the paper grid's size, 3200 units,
0.9 s against 24 s unit by unit: BENCHMARKS.md)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from landscape.results.layout import ROWS
from landscape.results.schema import DTYPES, normalized

# read_csv's dtypes: the schema's string and boolean columns as strings (the rest inferred,
# then converted by ``normalized``)
_READ_DTYPES = {c: ("string" if t in ("string", "boolean") else None) for c, t in DTYPES.items()}
_ORDER = "__unit_order"


@dataclass(frozen=True)
class UnitRows:
    """The verified bytes of one unit's ``rows.csv``: its name (filled into rows written
    before the ``unit`` column existed), the row count its DONE marker recorded (None: none)
    and its folder relative to the root (named when it cannot be read)."""

    data: bytes
    unit: str
    rows: Optional[int]
    label: str


def read_rows(data: bytes, unit: str) -> pd.DataFrame:
    """One unit's rows with the schema's columns and dtypes; ``ValueError`` / ``TypeError`` /
    ``pandas.errors.ParserError`` when they cannot be read (:func:`unreadable`)."""
    return normalized(_parse(data, [unit], None))


def unreadable(e: Exception) -> str:
    """Why a unit whose rows cannot be read is damaged."""
    return f"its {ROWS} cannot be read ({e}) (damaged)"


def read_units(units: list[UnitRows], bad: list[dict[str, str]]) -> Optional[pd.DataFrame]:
    """Every unit's rows in one frame of the schema's dtypes, in the order of ``units`` (None
    for no units). The units of one header line (every unit ``write_stage`` wrote since the
    schema last changed) are parsed and converted at once, their rows told apart by the row
    counts their markers recorded. A unit whose marker recorded no count, and the units of a
    header where one cannot be read, are read unit by unit: each that cannot be read is
    appended to ``bad`` (``{"unit": label, "reason": ...}``) and left out."""
    groups: dict[Optional[bytes], list[tuple[int, UnitRows]]] = {}
    for i, u in enumerate(units):  # None: no count recorded (an old marker), read on its own
        counted = isinstance(u.rows, int) and u.rows >= 0
        groups.setdefault(u.data.split(b"\n", 1)[0] if counted else None, []).append((i, u))
    frames = []
    for header, group in groups.items():
        if header is not None:
            try:
                frames.append(_typed(_group(header, group)))
                continue
            except (ValueError, TypeError, pd.errors.ParserError):
                pass  # below: unit by unit, to name the one that cannot be read
        for i, u in group:
            try:
                frames.append(_typed(_parse(u.data, [u.unit], None, order=[i])))
            except (ValueError, TypeError, pd.errors.ParserError) as e:
                bad.append({"unit": u.label, "reason": unreadable(e)})
    if not frames:
        return None
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if len(groups) > 1:  # the units' order, whatever their headers
        df = df.iloc[np.argsort(df[_ORDER].to_numpy(), kind="stable")]
    return df.drop(columns=_ORDER).reset_index(drop=True)


def _typed(raw: pd.DataFrame) -> pd.DataFrame:
    """``normalized(raw)`` keeping the units' positions."""
    df = normalized(raw)
    df[_ORDER] = raw[_ORDER].to_numpy()
    return df


def _group(header: bytes, group: list[tuple[int, UnitRows]]) -> pd.DataFrame:
    """The rows of units that share ``header``, parsed at once; ``ValueError`` when their
    recorded counts do not add up to what was parsed."""
    counts = [u.rows for _, u in group]
    bodies = []
    for _, u in group:
        body = u.data.split(b"\n", 1)[1] if b"\n" in u.data else b""
        bodies.append(body if not body or body.endswith(b"\n") else body + b"\n")
    return _parse(header + b"\n" + b"".join(bodies), [u.unit for _, u in group], counts,
                  order=[i for i, _ in group])


def _parse(data: bytes, units: list[str], counts: Optional[list[int]],
           order: Optional[list[int]] = None) -> pd.DataFrame:
    """``data`` parsed, ``unit`` filled in where empty (each of ``units`` over its ``counts``
    rows; one unit: all), and the units' positions in ``order`` (a column dropped later)."""
    df = pd.read_csv(io.BytesIO(data), dtype=_READ_DTYPES, keep_default_na=True,
                     low_memory=False)
    counts = [len(df)] if counts is None else counts
    if sum(counts) != len(df):
        raise ValueError(f"{len(df)} rows parsed, the markers recorded {sum(counts)}")
    names = pd.Series(np.repeat(np.asarray(units, dtype=object), counts), index=df.index,
                      dtype="string")
    df["unit"] = df["unit"].fillna(names) if "unit" in df.columns else names
    if order is not None:
        df[_ORDER] = np.repeat(np.asarray(order), counts)
    return df
