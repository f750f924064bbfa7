"""Run identity: a readable prefix plus a hash of the canonical cell config. Never a timestamp.

``results/<arch>-w<width>-<dataset>-pool<level>-<hash>/seed=<seed>/`` where the hash covers
every identity field except the seed (so all seeds of a cell share a folder).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from landscape.config import RunConfig, identity_dict
from landscape.models import resolve_pool

HASH_LENGTH = 10


def cell_hash(cfg: RunConfig) -> str:
    ident = {k: v for k, v in identity_dict(cfg).items() if k != "seed"}
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_LENGTH]


def cell_name(cfg: RunConfig) -> str:
    m = cfg.model
    spec = resolve_pool(m.pool_level, m.pool_kernel, m.pool_stride, m.pool_padding)
    preset = (m.pool_kernel, m.pool_stride, m.pool_padding) == (None, None, None)
    pool = f"pool{m.pool_level}" if preset else f"poolk{spec.kernel}s{spec.stride}p{spec.padding}"
    return f"{m.name}-w{m.width:g}-{cfg.data.name}-{pool}-{cell_hash(cfg)}"


@dataclass(frozen=True)
class RunPaths:
    root: Path
    cell: Path
    run: Path

    @property
    def checkpoints(self) -> Path:
        return self.run / "checkpoints"

    @property
    def run_id(self) -> str:
        return f"{self.cell.name}/{self.run.name}"


def run_paths(cfg: RunConfig) -> RunPaths:
    root = Path(cfg.results_root).expanduser()
    cell = root / cell_name(cfg)
    return RunPaths(root=root, cell=cell, run=cell / f"seed={cfg.seed}")
