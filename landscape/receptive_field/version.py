"""Which version of the RF analysis computed a stored number: the digest of its source and
of the versions of the packages that define the models it traces (torch, torchvision, timm).

Every stored row derived from the analysis (the receptive-field stage's table, the probes'
predicted border, the analytic r_max beside a layer's ERF) records it with its unit, and a
unit written by another version is recomputed, so a store never keeps a number an older
analysis got wrong."""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

# the packages whose code the analysis reads: torch.fx and the ops' semantics, the models'
# definitions (an upgrade of timm may change a model's padding or its blocks)
PACKAGES = ("torch", "torchvision", "timm")


def package_versions() -> str:
    """``"torch=2.14.1;torchvision=0.29.1;timm=1.0.31"`` (``-`` for one not installed), read
    from the installed distributions' metadata (nothing is imported)."""
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    return ";".join(f"{name}={version(name)}" for name in PACKAGES)


@functools.lru_cache(maxsize=1)
def analysis_version() -> str:
    """The first 12 hex digits of the SHA-256 of the RF analysis's source files
    (``landscape/receptive_field/*.py``, by name, in name order) and of
    :func:`package_versions`."""
    digest = hashlib.sha256(package_versions().encode() + b"\0")
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def version_note() -> str:
    """``"RF analysis <digest> (landscape.receptive_field)"``: the note of a row derived from
    the analysis."""
    return f"RF analysis {analysis_version()} (landscape.receptive_field)"
