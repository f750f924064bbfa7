"""Which version of the RF analysis computed a stored number: the digest of its source.

Every stored row derived from the analysis (the receptive-field stage's table, the probes'
predicted border, the analytic r_max beside a layer's ERF) records it with its unit, and a
unit written by another version is recomputed, so a store never keeps a number an older
analysis got wrong."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.lru_cache(maxsize=1)
def analysis_version() -> str:
    """The first 12 hex digits of the SHA-256 of the RF analysis's source files
    (``landscape/receptive_field/*.py``, by name, in name order)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]
