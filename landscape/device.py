"""Device selection and the CUDA-only speed paths (bf16 AMP, channels_last, pinned memory).

Everything here is chosen from the *device*: on CPU every CUDA path is off, so the same code
runs everywhere and the selection logic is testable without a GPU.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class DeviceSettings:
    device: torch.device
    amp_dtype: Optional[torch.dtype]  # autocast dtype, None = full precision
    channels_last: bool
    pin_memory: bool
    non_blocking: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> ContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` moved to the device, in place, with its 4-D parameters and buffers in
        :attr:`memory_format`. A 5-D one (LambdaNet's Conv3d position lambdas) stays as it
        is: ``Module.to(memory_format=channels_last)`` refuses the whole model for it
        ("required rank 4 tensor"), which stopped such a model's training on CUDA."""
        model.to(self.device)
        if self.channels_last:
            with torch.no_grad():
                for t in itertools.chain(model.parameters(), model.buffers()):
                    if t.dim() == 4:
                        t.data = t.data.contiguous(memory_format=torch.channels_last)
        return model

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.non_blocking)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=auto or cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return dev


def device_settings(device: torch.device, *, amp: bool = True, channels_last: bool = True) -> DeviceSettings:
    """CUDA: bf16 autocast (if ``amp``), channels_last (if asked), pinned memory, async copies.

    CPU: all off (bf16 autocast on CPU is slow for convolutions and changes numerics).
    """
    cuda = device.type == "cuda"
    return DeviceSettings(
        device=device,
        amp_dtype=torch.bfloat16 if (cuda and amp) else None,
        channels_last=cuda and channels_last,
        pin_memory=cuda,
        non_blocking=cuda,
    )


def configure_backends(device: torch.device, *, deterministic: bool) -> None:
    """cuDNN autotuning on CUDA unless determinism is requested."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Inside the block, float32 matmuls and cuDNN convolutions on CUDA run in full precision.

    TF32 keeps 10 mantissa bits: products are off by ~1e-3 relatively, which is harmless for
    training but not for measurements (Hessian-vector products fed to Lanczos, CKA, importance
    maps). PyTorch enables TF32 for cuDNN convolutions by default and
    :func:`configure_backends` enables it for matmuls when training is not deterministic; this
    turns both off and restores them afterwards. No-op on CPU. It does not switch off an
    enclosing autocast; accuracy evaluation (:func:`landscape.train.evaluate`) runs without
    one, inside this block.
    """
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def progress_enabled(requested: bool = True) -> bool:
    """Progress bars are shown unless disabled or the ``CI`` environment variable is set."""
    return requested and not os.environ.get("CI")
