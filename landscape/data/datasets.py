"""The built-in datasets: cifar10, cifar100, tiny_imagenet, digits (offline), synthetic
(tests); imagenette is a folder per class (:mod:`landscape.data.folders`)."""

from __future__ import annotations

import copy
import functools
import pickle
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

from landscape.data.registry import (
    DataConfig, DatasetBundle, DatasetNotFoundError, register_dataset, stored_size,
)
from landscape.data.transforms import (
    CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, TINY_IMAGENET_MEAN,
    TINY_IMAGENET_STD, image_transforms,
)


class TensorImageDataset(Dataset):
    """In-memory images (N, C, H, W float32 in [0, 1]) and labels with a per-sample transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Optional[Callable] = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


def _subset(ds: Dataset, n: Optional[int]) -> Dataset:
    return ds if n is None or n >= len(ds) else Subset(ds, range(n))


def _bundle_from_tensors(
    cfg: DataConfig, xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor, num_classes: int,
    mean: tuple[float, ...], std: tuple[float, ...],
) -> DatasetBundle:
    size = int(xtr.shape[-1])
    kw = dict(size=size, mean=mean, std=std, resize=False, from_pil=False)
    return DatasetBundle(
        train=TensorImageDataset(xtr, ytr, image_transforms(cfg, train=True, **kw)),
        train_eval=TensorImageDataset(xtr, ytr, image_transforms(cfg, train=False, **kw)),
        test=TensorImageDataset(xte, yte, image_transforms(cfg, train=False, **kw)),
        num_classes=num_classes, in_channels=int(xtr.shape[1]), image_size=size, mean=mean, std=std,
    )


# ---------------------------------------------------------------------------------------------
DIGITS_TRAIN = 1437  # the 80% training split of scikit-learn's 1,797 digits


def _subset_size(total: int):
    """``train_size`` of a dataset with ``total`` training images, cut by data.train_subset."""
    return lambda cfg: min(total, cfg.train_subset or total)


@register_dataset("digits", image_size=32, in_channels=1, num_classes=10,
                  train_size=_subset_size(DIGITS_TRAIN))
def digits(cfg: DataConfig) -> DatasetBundle:
    """scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes), offline.

    Fixed stratified 80/20 split (random_state 0), bilinearly resized once to ``image_size``
    (default 32), one channel normalised with the training split's mean and std.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=d.target, random_state=0
    )
    size = stored_size(cfg)
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=True).clamp_(0, 1)
    if cfg.train_subset is not None:
        idx_tr = _stratified_head(idx_tr, d.target, cfg.train_subset)
    if cfg.test_subset is not None:
        idx_te = _stratified_head(idx_te, d.target, cfg.test_subset)
    xtr, ytr, xte, yte = x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]
    mean, std = (float(xtr.mean()),), (float(xtr.std()),)
    return _bundle_from_tensors(cfg, xtr, ytr, xte, yte, 10, mean, std)


def _stratified_head(idx: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of ``idx`` taken round-robin over classes (keeps classes balanced)."""
    if n >= len(idx):
        return idx
    by_class = [list(idx[labels[idx] == c]) for c in np.unique(labels[idx])]
    out: list[int] = []
    while len(out) < n:
        for group in by_class:
            if group and len(out) < n:
                out.append(group.pop(0))
    return np.sort(np.array(out))


# ---------------------------------------------------------------------------------------------
@register_dataset("synthetic", image_size=16, in_channels=3, num_classes=10,
                  train_size=lambda cfg: cfg.train_subset or 512)
def synthetic(cfg: DataConfig) -> DatasetBundle:
    """Deterministic learnable data for tests: a fixed random template per class plus noise.

    3 channels, 10 classes, ``image_size`` (default 16), ``train_subset`` (default 512) and
    ``test_subset`` (default 256) examples. Independent of any global RNG.
    """
    size, n_tr, n_te, k = stored_size(cfg), cfg.train_subset or 512, cfg.test_subset or 256, 10
    g = torch.Generator().manual_seed(12345)
    # Smooth (2x2 upsampled) class templates, so random crops and flips keep the class signal.
    coarse = torch.rand(k, 3, 2, 2, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                                align_corners=False)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n) % k
        x = (0.6 * templates[y] + 0.4 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
        return x, y

    (xtr, ytr), (xte, yte) = draw(n_tr), draw(n_te)
    return _bundle_from_tensors(cfg, xtr, ytr, xte, yte, k, (0.5,) * 3, (0.25,) * 3)


# ---------------------------------------------------------------------------------------------
def _cifar_files(cls: type[CIFAR10], root: Path) -> list[Path]:
    """The pickles of torchvision's CIFAR-10 or CIFAR-100 (``cls``) under ``root``."""
    base = root / cls.base_folder
    names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [base / n for n in names]


def _labels_in(path: Path) -> int:
    """The number of labels in a CIFAR pickle (0 for its meta file), unpickling each file
    version once: the readability check and the training-set count share it."""
    stat = path.stat()
    return _labels_of_version(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _labels_of_version(path: str, mtime_ns: int, size: int) -> int:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    if not isinstance(batch, dict):
        raise TypeError(f"a CIFAR pickle holds a dict, not {type(batch).__name__}")
    return len(batch.get("labels", batch.get("fine_labels", ())))  # CIFAR-10, CIFAR-100


def _check_cifar_files(cls: type[CIFAR10], title: str, root: Path, verify_md5: bool) -> None:
    """Every pickle unpickles (a truncated one is named) and, with ``verify_md5``, has the md5
    of the published ``title`` (``data.verify_md5=false`` for a tree of your own)."""
    from torchvision.datasets.utils import check_md5

    md5s = dict(cls.train_list + cls.test_list + [(cls.meta["filename"], cls.meta["md5"])])
    for path in _cifar_files(cls, root):
        if verify_md5 and not check_md5(str(path), md5s[path.name]):
            raise DatasetNotFoundError(
                f"{path} is not the published {title} file (md5 differs from "
                f"{md5s[path.name]}): truncated or corrupted. Delete it and set "
                "data.download=true, or data.verify_md5=false for a tree of your own.")
        if not verify_md5:
            try:
                _labels_in(path)
            except (EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
                raise DatasetNotFoundError(
                    f"{path} cannot be read ({type(e).__name__}: {e}): truncated or "
                    "corrupted. Delete it and set data.download=true.") from None


class _Present:
    """torchvision's CIFAR reading the standard pickles (presence here; md5 or readability
    in :func:`_check_cifar_files` before)."""

    def _check_integrity(self) -> bool:
        return all(p.is_file() for p in _cifar_files(type(self), Path(self.root)))

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _CIFAR10(_Present, CIFAR10):
    pass


class _CIFAR100(_Present, CIFAR100):
    pass


def _cifar_check(cls: type[CIFAR10], title: str, archive: str) -> Callable[[DataConfig], None]:
    """The registry's ``check`` of a CIFAR: its pickles are present (unless ``data.download``)
    and intact."""
    def check(cfg: DataConfig) -> None:
        root = Path(cfg.root).expanduser()
        missing = [str(p) for p in _cifar_files(cls, root) if not p.is_file()]
        if missing and not cfg.download:
            raise DatasetNotFoundError(
                f"{title} not found: looked in {root / cls.base_folder} and missed "
                f"{len(missing)} file(s) ({', '.join(Path(m).name for m in missing[:3])}...). "
                "Set data.download=true to fetch it with torchvision, or set data.root to the "
                f"folder that contains {cls.base_folder} (extracted from {archive}).")
        if not missing:
            _check_cifar_files(cls, title, root, cfg.verify_md5)

    return check


def _cifar_train_size(cls: type[CIFAR10]) -> Callable[[DataConfig], int]:
    """The registry's ``train_size``: 50,000 for the published files (``data.verify_md5``
    checked them) or before a download; else the images of the tree's own training pickles;
    cut by data.train_subset."""
    def train_size(cfg: DataConfig) -> int:
        root = Path(cfg.root).expanduser() / cls.base_folder
        paths = [root / name for name, _ in cls.train_list]
        total = 50_000
        if not cfg.verify_md5 and all(p.is_file() for p in paths):
            total = sum(_labels_in(path) for path in paths)
        return min(total, cfg.train_subset or total)

    return train_size


def _cifar_bundle(cfg: DataConfig, cls: type[CIFAR10], num_classes: int,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> DatasetBundle:
    root = Path(cfg.root).expanduser()
    size = stored_size(cfg)
    kw = dict(size=size, mean=mean, std=std, resize=size != 32, from_pil=True)
    train = cls(str(root), train=True, download=cfg.download,
                transform=image_transforms(cfg, train=True, **kw))
    train_eval = copy.copy(train)  # shares the decoded arrays
    train_eval.transform = image_transforms(cfg, train=False, **kw)
    test = cls(str(root), train=False, transform=image_transforms(cfg, train=False, **kw))
    return DatasetBundle(
        train=_subset(train, cfg.train_subset),
        train_eval=_subset(train_eval, cfg.train_subset),
        test=_subset(test, cfg.test_subset),
        num_classes=num_classes, in_channels=3, image_size=size, mean=mean, std=std,
    )


@register_dataset("cifar10", image_size=32, in_channels=3, num_classes=10,
                  check=_cifar_check(_CIFAR10, "CIFAR-10", "cifar-10-python.tar.gz"),
                  folder=lambda cfg: Path(cfg.root).expanduser() / CIFAR10.base_folder,
                  train_size=_cifar_train_size(_CIFAR10))
def cifar10(cfg: DataConfig) -> DatasetBundle:
    """CIFAR-10 from ``<root>/cifar-10-batches-py`` (torchvision's layout)."""
    return _cifar_bundle(cfg, _CIFAR10, 10, CIFAR10_MEAN, CIFAR10_STD)


@register_dataset("cifar100", image_size=32, in_channels=3, num_classes=100,
                  check=_cifar_check(_CIFAR100, "CIFAR-100", "cifar-100-python.tar.gz"),
                  folder=lambda cfg: Path(cfg.root).expanduser() / CIFAR100.base_folder,
                  train_size=_cifar_train_size(_CIFAR100))
def cifar100(cfg: DataConfig) -> DatasetBundle:
    """CIFAR-100 from ``<root>/cifar-100-python`` (torchvision's layout), its 100 fine
    labels."""
    return _cifar_bundle(cfg, _CIFAR100, 100, CIFAR100_MEAN, CIFAR100_STD)


# ---------------------------------------------------------------------------------------------
class TinyImageNetVal(Dataset):
    """Tiny ImageNet validation split: ``val/images/*.JPEG`` labelled by ``val_annotations.txt``."""

    def __init__(self, root: Path, class_to_idx: dict[str, int], transform: Callable) -> None:
        self.transform = transform
        self.samples: list[tuple[Path, int]] = []
        with open(root / "val" / "val_annotations.txt") as f:
            for line_no, line in enumerate(f, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2 or parts[1] not in class_to_idx:
                    raise ValueError(
                        f"{root / 'val' / 'val_annotations.txt'} line {line_no}: expected "
                        f"'<file>\\t<wnid>\\t...' with a wnid from wnids.txt, got {line!r}"
                    )
                self.samples.append((root / "val" / "images" / parts[0], class_to_idx[parts[1]]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), label


def _tiny_imagenet_root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() / "tiny-imagenet-200"


def _check_tiny_imagenet(cfg: DataConfig) -> None:
    """wnids.txt, train/ and val/val_annotations.txt exist."""
    root = _tiny_imagenet_root(cfg)
    needed = [root / "wnids.txt", root / "train", root / "val" / "val_annotations.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise DatasetNotFoundError(
            f"Tiny ImageNet not found: missing {', '.join(missing)}. Download tiny-imagenet-200.zip "
            "(http://cs231n.stanford.edu/tiny-imagenet-200.zip), unzip it into data.root "
            f"(now {cfg.root!r}) so that {root} exists."
        )


def _tiny_imagenet_train_size(cfg: DataConfig) -> int:
    """Training images on disk (train/<wnid>/images/*), cut by data.train_subset."""
    train = _tiny_imagenet_root(cfg) / "train"
    total = sum(1 for wnid in train.iterdir() if (wnid / "images").is_dir()
                for _ in (wnid / "images").iterdir())
    return min(total, cfg.train_subset or total)


@register_dataset("tiny_imagenet", image_size=64, in_channels=3, num_classes=200,
                  check=_check_tiny_imagenet, folder=_tiny_imagenet_root,
                  train_size=_tiny_imagenet_train_size)
def tiny_imagenet(cfg: DataConfig) -> DatasetBundle:
    """Tiny ImageNet-200 from ``<root>/tiny-imagenet-200`` (the standard folder layout).

    train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt, wnids.txt.
    The validation split serves as the test set (the official test split has no labels).
    """
    root = _tiny_imagenet_root(cfg)
    wnids = sorted(w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip())
    class_to_idx = {w: i for i, w in enumerate(wnids)}
    size = stored_size(cfg)
    kw = dict(size=size, mean=TINY_IMAGENET_MEAN, std=TINY_IMAGENET_STD, resize=size != 64,
              from_pil=True)

    def train_split(aug: bool) -> ImageFolder:
        ds = ImageFolder(str(root / "train"), transform=image_transforms(cfg, train=aug, **kw),
                         allow_empty=True)
        extra = sorted(set(ds.classes) - set(wnids))
        if extra:
            raise ValueError(f"{root / 'train'} has class folders not in wnids.txt: {extra[:5]}")
        # Re-index with the wnids.txt order so that train and val labels agree.
        ds.samples = [(p, class_to_idx[ds.classes[t]]) for p, t in ds.samples]
        ds.targets = [t for _, t in ds.samples]
        ds.imgs = ds.samples
        ds.classes, ds.class_to_idx = wnids, class_to_idx
        return ds

    return DatasetBundle(
        train=_subset(train_split(True), cfg.train_subset),
        train_eval=_subset(train_split(False), cfg.train_subset),
        test=_subset(TinyImageNetVal(root, class_to_idx, image_transforms(cfg, train=False, **kw)),
                     cfg.test_subset),
        num_classes=len(wnids), in_channels=3, image_size=size,
        mean=TINY_IMAGENET_MEAN, std=TINY_IMAGENET_STD,
    )
