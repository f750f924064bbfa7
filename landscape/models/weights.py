"""Opt-in pretrained weights (``model.weights=<path>``): a local ``state_dict`` file, never a
download.

The file holds the state_dict of the model as its source builds it: for ``torchvision:<name>``
/ ``timm:<name>`` the keys of the torchvision / timm model itself (``conv1.weight``, ``fc.bias``:
what ``torch.save(model.state_dict(), path)`` of that model writes), for a built-in
architecture the keys of the landscape model. Every key and shape must match the model built
for the data (its head has the data's classes, its first conv the data's channels): an error
names the keys that are missing, unexpected or of another shape. One exception: a timm or
torchvision model built for the run's input size (a ViT) takes a file saved at another size,
its position embeddings and relative-position tables resampled by the source's own checkpoint
filter (:mod:`landscape.models.resolution`). The run identity hashes the file's content
(:func:`weights_digest`), not its path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from landscape.fixed_size import built_for
from landscape.models.resolution import fit_state, mismatches

log = logging.getLogger(__name__)


def _check_file(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"model.weights={path!r}: no such file (a local state_dict saved with "
                         "torch.save(model.state_dict(), path); weights are never downloaded)")
    return p


def weights_digest(path: str) -> str:
    """``sha256:<hex>`` of the file's content (cached per path, size and modification time)."""
    p = _check_file(path)
    st = p.stat()
    return _digest(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file (loaded on the CPU, ``weights_only``)."""
    p = _check_file(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ValueError(f"model.weights={path!r}: not a readable state_dict file "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"model.weights={path!r}: expected a state_dict (a dict of tensors), "
                         f"got {type(state).__name__}")
    return state


def load_weights(model: nn.Module, path: str, arch: str) -> None:
    """Load the state_dict file ``path`` into ``model`` (built for ``arch``) in place; on the
    meta device the keys and shapes are checked only. Source keys are mapped through
    ``model.state_key`` / ``source_key`` where the model has them
    (:class:`~landscape.models.external.ExternalNet`). A transformer built for an input size
    takes a file saved at another size: its position tables are resampled by its source's
    checkpoint filter (:func:`~landscape.models.resolution.fit_state`; the resampled keys are
    logged)."""
    state, resampled = fit_state(read_state_dict(path), model)
    problems = mismatches(state, model)
    if problems:
        raise ValueError(f"model.weights={path!r} does not fit {arch} as built for the data: "
                         + "; ".join(problems))
    if resampled:
        log.info("model.weights=%r: %s resampled for %d px inputs by the source's checkpoint "
                 "filter", path, ", ".join(resampled), built_for(model))
    own = model.state_dict()
    if any(t.is_meta for t in own.values()):
        return
    to_own = getattr(model, "state_key", lambda k: k)
    model.load_state_dict({to_own(k): v for k, v in state.items()})
