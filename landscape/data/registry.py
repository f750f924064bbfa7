"""Dataset registry and the bundle every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch.utils.data import Dataset

from landscape.registry import Registry


@dataclass
class DataConfig:
    """Which dataset and how to load it.

    ``root``, ``download`` and ``num_workers`` describe where/how, not what: they are not part of
    a run's identity (field metadata ``identity: False``, see ``landscape.identity``).
    """

    name: str = "digits"
    root: str = field(default="data", metadata={"identity": False})
    download: bool = field(default=False, metadata={"identity": False})
    image_size: Optional[int] = None  # resize target; None = the dataset's native size
    augment: bool = True  # random crop with padding + horizontal flip on the training split
    crop_padding: int = 4
    hflip: bool = True
    train_subset: Optional[int] = None  # first N training examples (stratified for digits)
    test_subset: Optional[int] = None
    num_workers: int = field(default=0, metadata={"identity": False})
    # Check the md5 of real dataset files (CIFAR-10's batches); off for a tree of your own in
    # the same format (e.g. the small generated ones of the tests).
    verify_md5: bool = field(default=True, metadata={"identity": False})


@dataclass
class DatasetBundle:
    """What a loader provides. ``train_eval`` is the training split without augmentation."""

    train: Dataset
    train_eval: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message says where we looked and how to get it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a dataset without loading it."""

    image_size: int  # native side length in pixels
    in_channels: int
    num_classes: int


DATASETS: Registry[Callable[[DataConfig], DatasetBundle]] = Registry("dataset")
_INFO: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, image_size: int, in_channels: int, num_classes: int):
    """Decorator: register ``fn(cfg: DataConfig) -> DatasetBundle`` and its shape facts."""
    deco = DATASETS.register(name)

    def wrap(fn):
        _INFO[name] = DatasetInfo(image_size, in_channels, num_classes)
        return deco(fn)

    return wrap


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Image size (after ``cfg.image_size``), channels and classes, without loading the data."""
    DATASETS.get(cfg.name)
    info = _INFO[cfg.name]
    return DatasetInfo(cfg.image_size or info.image_size, info.in_channels, info.num_classes)


def list_datasets() -> list[str]:
    return DATASETS.names()


def validate_data_config(cfg: DataConfig) -> None:
    """Raise naming the ``data.*`` field of an impossible setting (without loading anything)."""
    DATASETS.get(cfg.name)
    for name in ("train_subset", "test_subset", "image_size"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ValueError(f"data.{name} must be >= 1 or null, got {v}")
    if cfg.crop_padding < 0:
        raise ValueError(f"data.crop_padding must be >= 0, got {cfg.crop_padding}")
    if cfg.num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {cfg.num_workers}")


def load_dataset(cfg: DataConfig) -> DatasetBundle:
    """Load the dataset named by ``cfg.name`` (see :func:`list_datasets`)."""
    validate_data_config(cfg)
    return DATASETS.get(cfg.name)(cfg)
