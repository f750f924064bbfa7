"""A uint8 cache of decoded image files (Tiny ImageNet): decoded once, loaded without unpickling.

``<folder>.uint8.npy`` (``np.save`` of an (N, H, W, 3) uint8 array: loads with
``allow_pickle=False``, memory-mapped) next to the image folder, with ``<folder>.uint8.json``
recording the files it was decoded from (their count, relative paths' hash, total size and
newest mtime): a changed tree is decoded again. Both are written to a temporary file and
renamed, so a killed decode leaves no half-written cache. Where the data folder is not
writable the cache goes to ``$LANDSCAPE_CACHE`` (default ``~/.cache/landscape``), with a
warning saying so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from landscape.storage import atomic_write, atomic_write_json

log = logging.getLogger("landscape")
CACHE_FORMAT = 1


def _fingerprint(paths: Sequence[Path], base: Path) -> dict:
    stats = [p.stat() for p in paths]
    names = "\n".join(os.path.relpath(p, base) for p in paths)
    return {"format": CACHE_FORMAT, "count": len(paths),
            "paths_sha256": hashlib.sha256(names.encode()).hexdigest(),
            "bytes": sum(s.st_size for s in stats),
            "newest_mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_images(paths: Sequence[Path]) -> np.ndarray:
    """The images at ``paths`` decoded as the DataLoader path decodes them (PIL,
    ``convert("RGB")``), stacked (N, H, W, 3) uint8; all must have one size."""
    first = _decode(paths[0]) if paths else np.zeros((0, 0, 3), np.uint8)
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)
    for k, p in enumerate(paths):
        a = first if k == 0 else _decode(p)
        if a.shape != first.shape:
            raise ValueError(f"{p} is {a.shape[1]}x{a.shape[0]}, the first image "
                             f"{paths[0]} is {first.shape[1]}x{first.shape[0]}: a resident "
                             "dataset needs one size (use data.loader=dataloader)")
        out[k] = a
    return out


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def fallback_dir() -> Path:
    return Path(os.environ.get("LANDSCAPE_CACHE", "~/.cache/landscape")).expanduser()


def cache_files(folder: Path) -> tuple[Path, Path]:
    """Where the cache of the images under ``folder`` lives: next to it when its parent is
    writable, else under :func:`fallback_dir` (named by a hash of the folder's path)."""
    folder = folder.resolve()
    parent = folder.parent
    if not _writable(parent):
        key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
        parent = fallback_dir() / f"{folder.name}-{key}"
    return parent / f"{folder.name}.uint8.npy", parent / f"{folder.name}.uint8.json"


def cached_images(paths: Sequence[Path], folder: Optional[Path] = None) -> np.ndarray:
    """The decoded images at ``paths`` (all under ``folder``, default their common folder),
    from the cache when it matches the files, else decoded and cached. Memory-mapped
    read-only."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images to cache")
    folder = Path(folder) if folder else Path(os.path.commonpath([str(p) for p in paths]))
    npy, meta = cache_files(folder)
    fp = _fingerprint(paths, folder)
    if npy.exists() and meta.exists():
        try:
            if json.loads(meta.read_text()) == fp:
                return np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            log.warning("image cache %s unreadable (%s); decoding again", npy, e)
    if npy.parent != folder.resolve().parent:
        log.warning("%s is not writable: caching its decoded images in %s", folder.parent,
                    npy.parent)
    log.info("decoding %d images under %s into %s (once)", len(paths), folder, npy)
    images = decode_images(paths)
    atomic_write(npy, lambda f: np.save(f, images, allow_pickle=False))
    atomic_write_json(meta, fp)
    return np.load(npy, mmap_mode="r", allow_pickle=False)
