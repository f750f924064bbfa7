"""Images of your own as a dataset: a folder per class, registered under a name.

In your module (listed in ``imports``)::

    from landscape.data import register_image_folder

    register_image_folder("leaves", folder="leaves", image_size=128, num_classes=12)

and ``landscape-run imports=[mypkg.mydata] data.name=leaves data.root=/datasets ...`` reads
``/datasets/leaves/train/<class>/<image>`` for training and ``/datasets/leaves/val/<class>/
<image>`` for testing (torchvision's ``ImageFolder``: the files PIL reads with one of its
image extensions, in sorted order, converted to RGB). The classes are the training split's
folders in sorted order (label = position); the test split uses the same labels and may lack
classes. Every image is brought to ``image_size`` (or ``data.image_size``) square: by default
its shorter side resized to it and the centre cropped (``fit="center_crop"``; ``"squash"``
resizes both sides), then the training augmentation of ``data.*`` (``data.crop``,
``data.crop_padding``, ``data.hflip``) and normalisation by ``mean`` / ``std`` (default
ImageNet's). The dataset's name is in the run's identity; its folder on disk (``data.root``)
is not. Checked before anything runs: both splits exist (else where it looked), the training
split has ``num_classes`` class folders, the test split no other class. The resident data
path (``data.loader=auto|resident``, :mod:`landscape.data.resident`) decodes every image once
per run, brought to size exactly as the DataLoader path does it before augmenting
(:meth:`_ClassFolder.fitted_images`), and holds them as float32 (``auto`` takes it when they
fit in half the free device memory, or on the CPU half the available host memory); the
DataLoader path decodes every file in every epoch.
"""

from __future__ import annotations

import copy
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from landscape.data.datasets import _subset
from landscape.data.registry import (
    DATASETS, DataConfig, DatasetBundle, DatasetNotFoundError, register_dataset, stored_size,
)
from landscape.data.transforms import (
    FITS, IMAGENET_MEAN, IMAGENET_STD, fitted_transform, image_transforms,
)

FOLDER_DATASETS: set[str] = set()  # the names register_image_folder registered


class _ClassFolder(ImageFolder):
    """An ImageFolder whose classes are given (a test split labelled as the training split);
    ``fit``: the part of ``transform`` before the augmentation (decoded, brought to size)."""

    def __init__(self, root: Path, classes: Sequence[str], transform: Callable,
                 fit: Optional[Callable] = None) -> None:
        self._given, self.fit = list(classes), fit
        super().__init__(str(root), transform=transform, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._given, {c: i for i, c in enumerate(self._given)}

    def fitted_images(self, indices: Optional[Sequence[int]] = None) -> Tensor:
        """The images ``indices`` (default all) as (N, H, W, 3) float32 in [0, 1]: decoded and
        brought to size as ``transform`` does before augmenting (the same values); decoded by
        a pool of threads."""
        paths = [self.samples[i][0] for i in (range(len(self)) if indices is None
                                                 else indices)]

        def one(path: str) -> Tensor:
            with Image.open(path) as im:
                return self.fit(im.convert("RGB")).permute(1, 2, 0)

        if not paths:
            return torch.zeros(0, 1, 1, 3)
        first = one(paths[0])
        out = torch.empty(len(paths), *first.shape, dtype=first.dtype)
        out[0] = first
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for k, image in enumerate(pool.map(one, paths[1:]), 1):
                out[k] = image
        return out


def class_folders(split: Path) -> list[str]:
    """The class folders of a split, sorted (hidden folders left out, as ImageFolder does)."""
    return sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def register_image_folder(name: str, *, folder: str, image_size: int, num_classes: int,
                          mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD, train: str = "train",
                          test: str = "val", fit: str = "center_crop",
                          source: str = "") -> None:
    """Register ``<data.root>/<folder>/{<train>,<test>}/<class>/<image>`` as dataset ``name``
    (see the module docstring). ``image_size``: the side images are brought to when
    ``data.image_size`` is null; ``num_classes``: the training split's class folders (checked);
    ``mean`` / ``std``: three per-channel values for normalisation; ``source``: where to get
    the images (said when they are not found)."""
    _check_arguments(name, folder, image_size, num_classes, mean, std, train, test, fit)
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def tree(cfg: DataConfig) -> Path:
        return Path(cfg.root).expanduser() / folder

    def check(cfg: DataConfig) -> None:
        root = tree(cfg)
        missing = [str(root / s) for s in (train, test) if not (root / s).is_dir()]
        if missing:
            raise DatasetNotFoundError(
                f"dataset {name!r} not found: no folder {' or '.join(missing)}. Put its images "
                f"in <data.root>/{folder}/{train}/<class>/ and <data.root>/{folder}/{test}/"
                f"<class>/ (data.root is now {cfg.root!r}), or set data.root to the folder "
                f"that contains {folder}/." + (f" Get it from {source}" if source else ""))
        classes = class_folders(root / train)
        if len(classes) != num_classes:
            raise ValueError(
                f"dataset {name!r}: {root / train} has {len(classes)} class folders "
                f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}), but it was "
                f"registered with num_classes={num_classes}")
        extra = sorted(set(class_folders(root / test)) - set(classes))
        if extra:
            raise ValueError(f"dataset {name!r}: {root / test} has class folders that "
                             f"{root / train} does not: {', '.join(extra[:5])}")

    def train_size(cfg: DataConfig) -> int:
        root = tree(cfg) / train
        classes = class_folders(root)
        total = len(make_dataset(str(root), {c: i for i, c in enumerate(classes)},
                                 extensions=IMG_EXTENSIONS, allow_empty=True))
        return min(total, cfg.train_subset or total)

    FOLDER_DATASETS.add(name)

    @register_dataset(name, image_size=image_size, in_channels=3, num_classes=num_classes,
                      check=check, folder=tree, train_size=train_size)
    def load(cfg: DataConfig) -> DatasetBundle:
        root = tree(cfg)
        classes = class_folders(root / train)
        size = stored_size(cfg)
        kw = dict(size=size, mean=mean, std=std, resize=True, from_pil=True, fit=fit)
        fitted = fitted_transform(size=size, resize=True, from_pil=True, fit=fit)

        def split(sub: str, augment: bool) -> ImageFolder:
            return _ClassFolder(root / sub, classes, image_transforms(cfg, train=augment, **kw),
                                fitted)

        train_set = split(train, True)
        if not train_set.samples:
            raise DatasetNotFoundError(f"dataset {name!r}: no image files in {root / train} "
                                       f"(extensions: {', '.join(IMG_EXTENSIONS)})")
        train_eval = copy.copy(train_set)  # the same files (listed once), not augmented
        train_eval.transform = image_transforms(cfg, train=False, **kw)
        return DatasetBundle(
            train=_subset(train_set, cfg.train_subset),
            train_eval=_subset(train_eval, cfg.train_subset),
            test=_subset(split(test, False), cfg.test_subset),
            num_classes=num_classes, in_channels=3, image_size=size, mean=mean, std=std)


def _check_arguments(name, folder, image_size, num_classes, mean, std, train, test,
                     fit) -> None:
    """Raise naming the argument of ``register_image_folder`` that cannot be used."""
    where = f"register_image_folder({name!r}, ...)"
    if name in DATASETS:
        raise ValueError(f"{where}: a dataset {name!r} is already registered; pick another "
                         f"name (registered: {', '.join(DATASETS.names())})")
    if not isinstance(folder, str) or not folder:
        raise ValueError(f"{where}: folder must be a non-empty folder name, got {folder!r}")
    for arg, value in (("image_size", image_size), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {arg} must be a positive integer, got {value!r}")
    for arg, value in (("mean", mean), ("std", std)):
        if (isinstance(value, (str, bytes)) or len(value) != 3
                or not all(isinstance(v, numbers.Real) for v in value)):
            raise ValueError(f"{where}: {arg} must be three numbers (R, G, B), got {value!r}")
    if not all(s > 0 for s in std):
        raise ValueError(f"{where}: std must be > 0 for every channel, got {std!r}")
    if fit not in FITS:
        raise ValueError(f"{where}: fit must be one of {FITS}, got {fit!r}")
    if not (isinstance(train, str) and isinstance(test, str) and train and test
            and train != test):
        raise ValueError(f"{where}: train and test must be two different folder names, got "
                         f"{train!r} and {test!r}")


# Imagenette (fast.ai): 10 easy ImageNet classes; the 160 px version (shorter side 160).
register_image_folder(
    "imagenette", folder="imagenette2-160", image_size=160, num_classes=10,
    source="https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz (extract it into "
           "data.root)")
