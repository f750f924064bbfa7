"""Dataset registry and the bundle every loader returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset, Subset

from landscape.data.resize import CanvasDataset
from landscape.registry import Registry


@dataclass
class DataConfig:
    """Which dataset and how to load it.

    ``root``, ``download``, ``num_workers`` and ``loader`` describe where/how, not what: they are
    not part of a run's identity (field metadata ``identity: False``, see ``landscape.identity``).
    """

    name: str = "digits"
    root: str = field(default="data", metadata={"identity": False})
    download: bool = field(default=False, metadata={"identity": False})
    image_size: Optional[int] = None  # resize target; None = the dataset's native size
    augment: bool = True  # random crop + horizontal flip on the training split
    # pad_crop: random crop of the padded image (CIFAR's) | random_resized_crop: torchvision's
    # RandomResizedCrop to the image size (the paper's Tiny ImageNet training)
    crop: str = "pad_crop"
    crop_padding: int = 4
    hflip: bool = True
    # The input-size protocol (issue 26, "Size Matters"): direct (resize the image to
    # image_size: the default) | down_up (resize to image_size, augment, then bilinear down to
    # down_size and back up to image_size: the paper's set C, train and test alike) | canvas
    # (the image at object_size, augmented, pasted at a uniform random position on a black
    # canvas of image_size; a fixed seeded position per image on the evaluation splits)
    resize: str = "direct"
    down_size: Optional[int] = None  # down_up's intermediate size (< image_size)
    object_size: Optional[int] = None  # canvas: the pasted image's size; None = native size
    # Training images held out of training (a fixed random choice, the same in every run; the
    # paper's Tiny ImageNet protocol holds out 5,000): DatasetBundle.holdout
    holdout: int = 0
    train_subset: Optional[int] = None  # first N training examples (stratified for digits)
    test_subset: Optional[int] = None
    # DataLoader workers; None: min(8, usable CPUs - 1) on CUDA, 0 on the CPU
    num_workers: Optional[int] = field(default=None, metadata={"identity": False})
    # auto | resident | dataloader (landscape.data.resident): resident holds the splits on the
    # device and augments whole batches there; auto picks it when the dataset can be held
    # (and follows the path recorded in a resumed run's checkpoint). Not identity: both paths
    # draw the same augmentation distribution (individual draws differ, as with num_workers).
    loader: str = field(default="auto", metadata={"identity": False})
    # Check the md5 of real dataset files (CIFAR-10's batches); off for a tree of your own in
    # the same format (e.g. the small generated ones of the tests).
    verify_md5: bool = field(default=True, metadata={"identity": False})


@dataclass
class DatasetBundle:
    """What a loader provides. ``train_eval`` is the training split without augmentation;
    ``holdout`` the training images held out by ``data.holdout`` (without augmentation)."""

    train: Dataset
    train_eval: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    holdout: Optional[Dataset] = None


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message says where we looked and how to get it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a dataset without loading it."""

    image_size: int  # native side length in pixels
    in_channels: int
    num_classes: int


DATASETS: Registry[Callable[[DataConfig], DatasetBundle]] = Registry(
    "dataset", hint="a dataset of your own: list the module that registers it in imports=[...]")
_INFO: dict[str, DatasetInfo] = {}
_CHECKS: dict[str, Callable[[DataConfig], None]] = {}
_FOLDERS: dict[str, Callable[[DataConfig], Path]] = {}
_TRAIN_SIZES: dict[str, Callable[[DataConfig], int]] = {}
CROPS = ("pad_crop", "random_resized_crop")
RESIZES = ("direct", "down_up", "canvas")  # data.resize
LOADERS = ("auto", "resident", "dataloader")  # data.loader


def register_dataset(name: str, *, image_size: int, in_channels: int, num_classes: int,
                     check: Optional[Callable[[DataConfig], None]] = None,
                     folder: Optional[Callable[[DataConfig], Path]] = None,
                     train_size: Optional[Callable[[DataConfig], int]] = None):
    """Decorator: register ``fn(cfg: DataConfig) -> DatasetBundle`` and its shape facts.
    ``check(cfg)``: a cheap test that the data is on disk and intact, run before anything is
    written (raise :class:`DatasetNotFoundError` saying where it looked and how to get it).
    ``folder(cfg)``: the dataset's own folder on disk (a results root may not overlap it);
    ``train_size(cfg)``: the number of training images ``fn`` will return (after
    ``data.train_subset``), cheaply, after ``check`` passed (``data.holdout`` is checked
    against it)."""
    deco = DATASETS.register(name)

    def wrap(fn):
        _INFO[name] = DatasetInfo(image_size, in_channels, num_classes)
        for table, value in ((_CHECKS, check), (_FOLDERS, folder), (_TRAIN_SIZES, train_size)):
            if value is not None:
                table[name] = value
        return deco(fn)

    return wrap


def dataset_folder(cfg: DataConfig) -> Optional[Path]:
    """The folder the dataset is read from, or None for data made in memory."""
    DATASETS.get(cfg.name)
    return _FOLDERS[cfg.name](cfg) if cfg.name in _FOLDERS else None


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Image size (the network's input: ``cfg.image_size``, the canvas of ``resize=canvas``),
    channels and classes, without loading the data."""
    DATASETS.get(cfg.name)
    check_resize(cfg)
    info = _INFO[cfg.name]
    return DatasetInfo(cfg.image_size or info.image_size, info.in_channels, info.num_classes)


def native_size(cfg: DataConfig) -> int:
    """The dataset's own side length in pixels (its registered ``image_size``)."""
    DATASETS.get(cfg.name)
    return _INFO[cfg.name].image_size


def stored_size(cfg: DataConfig) -> int:
    """The side the images are resized to before augmentation: the object of
    ``resize=canvas`` (``object_size``, default the native size), else the input size."""
    if cfg.resize == "canvas":
        return cfg.object_size or native_size(cfg)
    return cfg.image_size or native_size(cfg)


def resize_label(cfg: DataConfig) -> str:
    """The ``resize`` column of a run's rows: ``"direct"``, ``"down_up:<down_size>"`` or
    ``"canvas:<object size>"``."""
    if cfg.resize == "down_up":
        return f"down_up:{cfg.down_size}"
    if cfg.resize == "canvas":
        return f"canvas:{stored_size(cfg)}"
    return "direct"


def check_resize(cfg: DataConfig) -> None:
    """Raise naming the ``data.*`` field of an impossible input-size protocol."""
    if cfg.resize not in RESIZES:
        raise ValueError(f"data.resize must be one of {RESIZES}, got {cfg.resize!r}")
    for name in ("image_size", "down_size", "object_size"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"data.{name} must be a positive integer or null, got {v!r}")
    for name, protocol in (("down_size", "down_up"), ("object_size", "canvas")):
        if getattr(cfg, name) is not None and cfg.resize != protocol:
            raise ValueError(f"data.{name} is only used by data.resize={protocol}, got "
                             f"data.resize={cfg.resize}; drop it or set data.resize={protocol}")
    size = cfg.image_size or native_size(cfg)
    if cfg.resize == "down_up":
        if cfg.down_size is None:
            raise ValueError(f"data.down_size must be set for data.resize=down_up (the "
                             f"intermediate size, < data.image_size={size})")
        if cfg.down_size >= size:
            raise ValueError(f"data.down_size must be < data.image_size={size} for "
                             f"data.resize=down_up, got {cfg.down_size}")
    if cfg.resize == "canvas" and size < stored_size(cfg):
        raise ValueError(f"data.image_size (the canvas, {size} px) must be >= the pasted image "
                         f"(data.object_size, {stored_size(cfg)} px) for data.resize=canvas")


def list_datasets() -> list[str]:
    return DATASETS.names()


def validate_data_config(cfg: DataConfig) -> None:
    """Raise naming the ``data.*`` field of an impossible setting (without loading anything)."""
    DATASETS.get(cfg.name)
    for name in ("train_subset", "test_subset", "image_size"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"data.{name} must be a positive integer or null, got {v!r}")
        if v is not None and v < 1:
            raise ValueError(f"data.{name} must be >= 1 or null, got {v}")
    if cfg.crop_padding < 0:
        raise ValueError(f"data.crop_padding must be >= 0, got {cfg.crop_padding}")
    if cfg.crop not in CROPS:
        raise ValueError(f"data.crop must be one of {CROPS}, got {cfg.crop!r}")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0 or null, got {cfg.num_workers}")
    if cfg.holdout < 0:
        raise ValueError(f"data.holdout must be >= 0, got {cfg.holdout}")
    if cfg.loader not in LOADERS:
        raise ValueError(f"data.loader must be one of {LOADERS}, got {cfg.loader!r}")
    check_resize(cfg)


def check_dataset(cfg: DataConfig) -> None:
    """The settings, and that the data is on disk and intact (the dataset's own cheap check),
    without loading it."""
    validate_data_config(cfg)
    if cfg.name in _CHECKS:
        _CHECKS[cfg.name](cfg)
    if cfg.holdout and cfg.name in _TRAIN_SIZES:
        check_holdout(cfg.holdout, _TRAIN_SIZES[cfg.name](cfg))


def check_holdout(holdout: int, total: int) -> None:
    """``data.holdout`` must leave at least one of the ``total`` training images."""
    if holdout >= total:
        raise ValueError(f"data.holdout={holdout} leaves no training images (the training "
                         f"split has {total}); use at most {total - 1}")


def load_dataset(cfg: DataConfig) -> DatasetBundle:
    """Load the dataset named by ``cfg.name`` (see :func:`list_datasets`), minus the
    ``data.holdout`` training images; with ``data.resize=canvas`` every split on its canvas
    (``bundle.image_size`` is then the canvas: the network's input)."""
    check_dataset(cfg)
    bundle = DATASETS.get(cfg.name)(cfg)
    bundle = _hold_out(bundle, cfg.holdout) if cfg.holdout else bundle
    if cfg.resize == "canvas":
        bundle = _on_canvas(bundle, cfg.image_size or native_size(cfg))
    return bundle


def _on_canvas(bundle: DatasetBundle, canvas: int) -> DatasetBundle:
    """``resize=canvas``: every split pasted on the canvas (the training split at random
    offsets, the others at each image's fixed offset)."""

    def put(ds, random):
        return None if ds is None else CanvasDataset(
            ds, canvas, bundle.image_size, bundle.mean, bundle.std, random=random)

    return dataclasses.replace(bundle, train=put(bundle.train, True),
                               train_eval=put(bundle.train_eval, False),
                               test=put(bundle.test, False), holdout=put(bundle.holdout, False),
                               image_size=canvas)


def _hold_out(bundle: DatasetBundle, n: int) -> DatasetBundle:
    """``n`` training images chosen by a fixed seed (the same in every run) move to
    ``holdout``; the rest keep their order."""
    total = len(bundle.train)
    check_holdout(n, total)
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(0))
    held, kept = sorted(perm[:n].tolist()), sorted(perm[n:].tolist())
    return dataclasses.replace(bundle, train=Subset(bundle.train, kept),
                               train_eval=Subset(bundle.train_eval, kept),
                               holdout=Subset(bundle.train_eval, held))
