"""Several runs per GPU (``launcher.runs_per_gpu``): models too small to fill a GPU share it,
one process per run. The memory a run needs is estimated (resident data, weights with their
gradients and momentum, activations of a training batch measured on the meta device, a CUDA
context) and checked against the GPU's free memory before anything starts.
"""

from __future__ import annotations

import dataclasses
import os
import queue
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from landscape.config import RunConfig
from landscape.data.registry import dataset_info
from landscape.data.resident import resident_bytes
from landscape.grid.launcher import SubmissionError
from landscape.identity import identify

CONTEXT_BYTES = 600 * 2**20  # a CUDA context with cuDNN/cuBLAS workspaces, per process
# images of the full splits (train + test) of the built-in datasets
FULL_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
              "tiny_imagenet": (100_000, 10_000),
              "digits": (1_437, 360), "synthetic": (512, 256)}


def _activation_bytes(cfg: RunConfig) -> int:
    """Bytes of the module outputs of one training batch (float32; kept for the backward),
    from a forward on the meta device (no memory, no compute)."""
    ident = identify(cfg)
    with torch.device("meta"):
        model = ident.build_model()
    total = 0

    def hook(_m: nn.Module, _i, out) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * 4

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not list(m.children())]
    try:
        model(ident.meta_batch(cfg.train.batch_size))
    finally:
        for h in handles:
            h.remove()
    return total


def estimate_run_bytes(cfg: RunConfig) -> int:
    """GPU memory one run needs, roughly: resident images (uint8, float32 for the float
    datasets), 4 float32 copies of the weights (weights, gradients, momentum, a checkpoint
    copy), the activations of a training batch and a CUDA context."""
    info = dataset_info(cfg.data)
    n_train, n_test = FULL_SIZES.get(cfg.data.name, (0, 0))
    n_train = min(n_train, cfg.data.train_subset or n_train)
    n_test = min(n_test, cfg.data.test_subset or n_test)
    data = resident_bytes(cfg.data, n_train + n_test, info.in_channels, info.image_size)
    if cfg.data.loader == "dataloader":
        data = 0
    params = identify(cfg).num_params * 4 * 4
    return data + params + _activation_bytes(cfg) + CONTEXT_BYTES


def check_gpu_memory(cfgs: Sequence[RunConfig], runs_per_gpu: int,
                     free_bytes: Sequence[int]) -> None:
    """Raise :class:`SubmissionError` when ``runs_per_gpu`` of the largest run do not fit in
    the free memory of every GPU (``free_bytes``, one per GPU)."""
    if not cfgs:
        return
    need = max(estimate_run_bytes(c) for c in cfgs)
    for i, free in enumerate(free_bytes):
        if runs_per_gpu * need > free:
            raise SubmissionError(
                f"launcher.runs_per_gpu={runs_per_gpu}: {runs_per_gpu} runs need about "
                f"{runs_per_gpu * need / 2**30:.1f} GiB ({need / 2**30:.2f} GiB each, estimated), "
                f"GPU {i} has {free / 2**30:.1f} GiB free; lower launcher.runs_per_gpu "
                f"(at most {max(0, free // need)} fit) or the batch size")


def visible_gpus() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def free_memory(gpus: Sequence[int]) -> list[int]:
    return [torch.cuda.mem_get_info(g)[0] for g in gpus]


def gpu_slots(gpus: Sequence[int], runs_per_gpu: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each of the ``len(gpus) * runs_per_gpu`` worker
    slots: every GPU ``runs_per_gpu`` times. The ids are the ones this process sees (they are
    mapped through an inherited CUDA_VISIBLE_DEVICES)."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = parent.split(",") if parent else [str(g) for g in gpus]
    return [names[g] for g in gpus for _ in range(runs_per_gpu)]


def run_on_a_slot(slots: "queue.Queue[str]", fn: Callable[[RunConfig], object],
                  cfg: RunConfig) -> object:
    """In a fresh worker process: take a GPU slot, make that GPU the only one this process
    sees (before CUDA starts), run ``fn(cfg)``, give the slot back."""
    slot = slots.get()
    try:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot
        return fn(cfg)
    finally:
        slots.put(slot)


def with_threads(cfgs: Sequence[RunConfig], threads: int) -> list[RunConfig]:
    """Runs that do not set num_threads get ``threads``."""
    return [c if c.num_threads else dataclasses.replace(c, num_threads=threads) for c in cfgs]


def groups(items: Sequence, k: int) -> list[list]:
    """``items`` in consecutive groups of ``k`` (the last may be smaller)."""
    return [list(items[i:i + k]) for i in range(0, len(items), k)]


def describe_packing(n_runs: int, runs_per_gpu: int, gpus: Optional[int] = None) -> str:
    where = f"{gpus} visible GPUs" if gpus is not None else "each job's GPU"
    return f"{runs_per_gpu} runs per GPU (separate processes sharing {where})"
