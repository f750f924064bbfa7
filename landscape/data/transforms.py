"""The paper's augmentation: a random crop (of the padded image, or torchvision's
RandomResizedCrop for Tiny ImageNet) + horizontal flip + normalisation."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision.transforms import v2

from landscape.data.registry import DataConfig
from landscape.data.resize import DownUp

# Per-channel statistics of the CIFAR-10 training set (as in the paper's training script).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
# CIFAR-100 training-set statistics (commonly used values).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# Tiny ImageNet training-set statistics (commonly used values).
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)
# ImageNet training-set statistics (torchvision's): the default of an image folder of your own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FITS = ("squash", "center_crop")  # how an image that is not square is brought to size x size


def image_transforms(
    cfg: DataConfig, *, train: bool, size: int, mean: Sequence[float], std: Sequence[float],
    resize: bool, from_pil: bool, fit: str = "squash",
) -> Callable:
    """PIL image or uint8/float CHW tensor -> normalised float32 CHW tensor of side ``size``
    (the stored size, :func:`landscape.data.registry.stored_size`). With ``resize``, ``fit``
    says how: ``squash`` resizes to ``size x size``, ``center_crop`` resizes the shorter side to
    ``size`` and crops the centre (the same on a square image). ``data.resize=down_up``
    adds the down-and-up resize after the augmentation (``canvas`` is pasted around the
    normalised image by ``landscape.data.resize.CanvasDataset``)."""
    ops = _fit_ops(size=size, resize=resize, from_pil=from_pil, fit=fit)
    if train and cfg.augment:
        ops.append(v2.RandomResizedCrop(size, antialias=True) if cfg.crop == "random_resized_crop"
                   else v2.RandomCrop(size, padding=cfg.crop_padding))
        if cfg.hflip:
            ops.append(v2.RandomHorizontalFlip())
    if cfg.resize == "down_up":
        ops.append(DownUp(cfg.down_size, size))
    ops.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(ops)


def _fit_ops(*, size: int, resize: bool, from_pil: bool, fit: str) -> list:
    ops: list = [v2.ToImage()] if from_pil else []
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if resize and fit == "center_crop":
        ops += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    elif resize:
        ops.append(v2.Resize((size, size), antialias=True))
    return ops


def fitted_transform(*, size: int, resize: bool, from_pil: bool, fit: str = "squash"
                     ) -> Callable:
    """The first steps of :func:`image_transforms`: to float32 in [0, 1] and brought to
    ``size`` (what the resident path holds of an image folder)."""
    return v2.Compose(_fit_ops(size=size, resize=resize, from_pil=from_pil, fit=fit))
