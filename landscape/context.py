"""What a stage may use: the resources of one run or cell (its identity, data, device settings,
models built from its seed, checkpoints), computed once, on first use. Implements the
``RunContext`` and ``CellContext`` protocols of ``landscape.stages.base``."""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from landscape import results
from landscape.config import RunConfig
from landscape.data import DatasetBundle, load_dataset
from landscape.data.resident import ResidentBundle, choose_loader, resident_bundle
from landscape.device import DeviceSettings
from landscape.identity import RunIdentity
from landscape.results import RunPaths
from landscape.seeds import INIT, seed_everything, stream_seed
from landscape.stages.checkpoints import checkpoint_epoch
from landscape.storage import CheckpointError, load_checkpoint
from landscape.train import EPOCH_PREFIX


def build_seeded(identity: RunIdentity, seed: int) -> nn.Module:
    """A freshly initialised model, seeded from ``seed`` (the same init every time)."""
    with torch.random.fork_rng(devices=[]):
        seed_everything(stream_seed(seed, INIT))
        return identity.build_model()


def load_seeded(identity: RunIdentity, seed: int, path: Path, device: torch.device) -> nn.Module:
    model = build_seeded(identity, seed)
    run_id = identity.with_seed(seed).run_id
    if path.name == "best.pt" and not path.exists() and path.with_name("final.pt").exists():
        raise CheckpointError(f"checkpoint not found: {path}. Training writes best.pt (the "
                              "epoch of best test accuracy) since it was added; this run was "
                              "trained before: retrain it, or measure checkpoint final instead")
    if path.name.startswith(EPOCH_PREFIX) and not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}. Training writes the epochs of "
                              "train.save_epochs; this run was trained before it held that "
                              "epoch (save_epochs is not part of the run's identity): delete "
                              f"{path.parent / 'last.pt'} and {path.parent / 'final.pt'} to "
                              "train it again from init.pt with the current train.save_epochs")
    model.load_state_dict(load_checkpoint(path, run_id=run_id)["model"])
    return model.to(device)


class RunResources:
    """The resources of one run or cell, computed once, on first use (see the protocols in
    ``landscape.stages.base``)."""

    def __init__(self, cfg: RunConfig, identity: RunIdentity, paths: RunPaths,
                 settings: DeviceSettings, seeds: Sequence[int] = ()) -> None:
        self.cfg, self.identity, self.paths, self.settings = cfg, identity, paths, settings
        self.train, self.progress, self.num_workers = cfg.train, cfg.progress, cfg.data.num_workers
        self.seeds = list(seeds)

    @cached_property
    def data(self) -> DatasetBundle:
        return load_dataset(self.cfg.data)

    def data_at(self, image_size: int, *, same_protocol: bool = False) -> DatasetBundle:
        """The run's dataset loaded at another input size (``data.image_size``), resized
        directly (``data.resize=direct``) whatever the run's own protocol, or with the run's
        own ``data.resize`` (its ``down_size``, its pasted image's size) when
        ``same_protocol``."""
        d = self.cfg.data
        if image_size == self.data.image_size and (same_protocol or d.resize == "direct"):
            return self.data
        if same_protocol:  # down_size and object_size (None: the native size) kept
            return load_dataset(dataclasses.replace(d, image_size=image_size))
        return load_dataset(dataclasses.replace(d, image_size=image_size, resize="direct",
                                                down_size=None, object_size=None))

    def data_path(self, recorded: Optional[str] = None) -> str:
        """``"resident"`` or ``"dataloader"`` for ``data.loader`` on this device (``auto``
        follows ``recorded``, the path of the run's checkpoint)."""
        return choose_loader(self.cfg.data.loader, self.cfg.data, self.data,
                             self.settings.device, recorded)

    @cached_property
    def resident(self) -> ResidentBundle:
        """The splits of :attr:`data` held on the device (uint8 where the files are)."""
        return resident_bundle(self.cfg.data, self.data, self.settings)

    @property
    def checkpoint_dir(self) -> Path:
        return self.paths.checkpoints

    @property
    def scratch_dir(self) -> Path:
        return self.paths.scratch

    def build_model(self) -> nn.Module:
        return build_seeded(self.identity, self.identity.seed or 0)

    def load_model(self, checkpoint: str) -> nn.Module:
        return load_seeded(self.identity, self.identity.seed, self.checkpoint_dir / f"{checkpoint}.pt",
                     self.settings.device)

    def load_models(self, checkpoint: str) -> dict[int, nn.Module]:
        return {s: load_seeded(self.identity, s, results.run_paths(
            self.paths.root, self.identity.cell_name, s).checkpoints / f"{checkpoint}.pt",
            self.settings.device) for s in self.seeds}

    def unit_epoch(self, unit: Any) -> Optional[int]:
        """The epoch of the checkpoint a unit measures (``unit.params["checkpoint"]``): init 0,
        final train.epochs, epoch_<n> n, best the epoch recorded in the run's best.pt (None
        for a cell unit, whose seeds each have their own); None for a unit without one."""
        checkpoint = unit.params.get("checkpoint")
        if checkpoint is None:
            return None
        best = None
        if checkpoint == "best" and self.identity.seed is not None:
            path = self.checkpoint_dir / "best.pt"
            best = int(load_checkpoint(path)["epoch"]) if path.exists() else None
        return checkpoint_epoch(checkpoint, self.cfg.train, best)

    def read_arrays(self, unit: str) -> dict[str, Any]:
        return results.read_arrays(self.paths.run_dir, unit)
