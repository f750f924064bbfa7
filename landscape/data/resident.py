"""Device-resident data: the whole split held on the training device, batches augmented there.

The DataLoader path transforms one image at a time (torchvision v2 on the CPU, optionally in
worker processes). For datasets that fit in memory (digits, synthetic, CIFAR-10; Tiny ImageNet
through its uint8 cache, :mod:`landscape.data.cache`; an image folder decoded once per run,
:mod:`landscape.data.folders`) this module keeps the images as uint8 (or float32 in [0, 1] for
the datasets that are float already, resized or decoded and fitted) in NHWC on the device and
draws each batch with vectorised operations: one gather does the random padded crop and the
horizontal flip, ``grid_sample`` does RandomResizedCrop, then conversion to float and
normalisation.

Randomness: every draw of an epoch (the order, the crop offsets or boxes, the flips) comes from
one CPU :class:`torch.Generator` that the caller seeds from ``(seed, epoch)``, drawn at the
start of the epoch in a fixed order and moved to the device in one copy. So the batches of an
epoch depend only on the seed, the epoch and the data, not on the device, the number of
threads or whether the run was resumed.

Equivalence with the DataLoader path (``landscape.data.transforms``): the *distribution* of
augmentations is the same (uniform crop offsets in ``[0, 2 * padding]`` per axis, flips with
probability 1/2, torchvision's RandomResizedCrop box sampling with its 10 tries and its
central-crop fallback). The individual draws differ (another generator, another order of
draws). Given the same offsets and flip, a padded crop here is bit-identical to v2's
(zero padding before normalisation, the same float operations). RandomResizedCrop resamples
with ``grid_sample`` (bilinear, ``align_corners=False``, source coordinates clamped to the box,
which is what resizing the cropped box does at its border): the box is never larger than the
image and the output has the image's size, so this is an upsampling, where torchvision's
antialiased bilinear resize computes the same interpolation; values agree to float rounding
(~1e-6), not bit for bit. The PIL-decoded pixels are the same (the uint8 cache holds them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from landscape.data.registry import LOADERS, stored_size
from landscape.data.resize import down_up, fixed_offsets, paste, random_offsets

RRC_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop defaults
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_TRIES = 10


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation of ``data.*``: crop ``None`` (no crop), ``"pad_crop"`` or
    ``"random_resized_crop"``; then a horizontal flip with probability 1/2 if ``hflip``."""

    crop: Optional[str] = None
    padding: int = 0
    hflip: bool = False

    @classmethod
    def from_config(cls, cfg, *, train: bool) -> Optional["Augmentation"]:
        if not (train and cfg.augment):
            return None
        return cls(cfg.crop, cfg.crop_padding, cfg.hflip)


def validate_loader(name: str) -> None:
    if name not in LOADERS:
        raise ValueError(f"data.loader must be one of {LOADERS}, got {name!r}")


# ---------------------------------------------------------------------------------------------
# Parameter draws (CPU generator): the same in every process for the same seed.
def draw_pad_crop(n: int, padding: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-sample offsets ``(dy, dx)`` of the crop in the padded image, uniform on
    ``[0, 2 * padding]`` (as v2.RandomCrop's ``top``/``left``)."""
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    return offsets[0], offsets[1]


def draw_flips(n: int, generator: torch.Generator) -> Tensor:
    """Per-sample flips, each with probability 1/2 (bool)."""
    return torch.rand(n, generator=generator) < 0.5


def draw_resized_crop(n: int, height: int, width: int, generator: torch.Generator, *,
                      scale: Sequence[float] = RRC_SCALE, ratio: Sequence[float] = RRC_RATIO,
                      tries: int = RRC_TRIES) -> Tensor:
    """Boxes ``(top, left, h, w)`` (int64, shape (n, 4)) drawn as torchvision's
    ``RandomResizedCrop.get_params`` draws them, vectorised: ``tries`` candidate (area, aspect)
    pairs per sample, the first that fits is kept, placed uniformly; a sample none of whose
    tries fits gets torchvision's fallback (the central crop with the aspect ratio clamped to
    ``ratio``)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    u = torch.rand(n, tries, 2, generator=generator, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect)).long()  # round half to even, as round()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(1)  # the first try that fits (0 when none does)
    rows = torch.arange(n)
    h, w, found = h[rows, first], w[rows, first], ok.any(1)
    # the fallback: central crop, the whole image unless its aspect is outside ``ratio``
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    h = torch.where(found, h, torch.full_like(h, fh))
    w = torch.where(found, w, torch.full_like(w, fw))
    pos = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = (pos[:, 0] * (height - h + 1)).floor().long()
    left = (pos[:, 1] * (width - w + 1)).floor().long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], 1)


# ---------------------------------------------------------------------------------------------
class ResidentSet:
    """One split on the device: ``images`` (N, H, W, C) uint8 (or float32 in [0, 1]),
    ``labels`` (N,) int64, normalised with ``mean``/``std``, augmented by ``augment``
    (None: evaluation). ``channels_last``: batches in channels_last memory (CUDA).

    The input-size protocol (``data.resize``, :mod:`landscape.data.resize`), after the
    augmentation: ``down_size``: bilinear down to it and back up to the image size;
    ``canvas``: pasted on a black canvas of that side, at offsets drawn per epoch
    (``canvas_random``: the training split) or at each image's fixed offset."""

    def __init__(self, images: Tensor, labels: Tensor, *, mean: Sequence[float],
                 std: Sequence[float], augment: Optional[Augmentation] = None,
                 channels_last: bool = False, down_size: Optional[int] = None,
                 canvas: Optional[int] = None, canvas_random: bool = False) -> None:
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"expected (N, H, W, C) images and N labels, got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"resident images must be uint8 or float32, got {images.dtype}")
        if augment is not None and augment.crop not in (None, "pad_crop", "random_resized_crop"):
            raise ValueError(f"unknown crop {augment.crop!r}")
        self.images, self.labels, self.augment = images, labels.long(), augment
        self.channels_last = channels_last
        self.down_size, self.canvas, self.canvas_random = down_size, canvas, canvas_random
        if canvas is not None and canvas < max(images.shape[1], images.shape[2]):
            raise ValueError(f"a canvas of {canvas} px cannot hold "
                             f"{tuple(images.shape[1:3])} images")
        # the fixed (evaluation) offsets of the images, row i for image i (kept by subset)
        self.canvas_offsets = (fixed_offsets(len(labels), canvas - images.shape[1])
                               if canvas is not None else None)
        dev = images.device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def with_augment(self, augment: Optional[Augmentation]) -> "ResidentSet":
        """The same tensors (shared, not copied) with another augmentation."""
        out = ResidentSet.__new__(ResidentSet)
        out.__dict__.update(self.__dict__)
        out.augment = augment
        out._pad_cache = (None, None)
        return out

    def evaluation(self) -> "ResidentSet":
        """The same tensors without augmentation, canvas offsets fixed: the evaluation view."""
        out = self.with_augment(None)
        out.canvas_random = False
        return out

    def subset(self, index: Tensor) -> "ResidentSet":
        """The samples ``index`` (a copy)."""
        index = index.to(self.device)
        out = self.with_augment(self.augment)
        out.images, out.labels = self.images[index], self.labels[index]
        if self.canvas_offsets is not None:
            out.canvas_offsets = self.canvas_offsets[index.cpu()]
        return out

    # -- the draws of one epoch ------------------------------------------------------------
    def draw(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """The augmentation parameters of ``n`` samples (CPU tensors) from ``generator``."""
        a, out = self.augment, {}
        if a is not None:
            if a.crop == "pad_crop":
                out["dy"], out["dx"] = draw_pad_crop(n, a.padding, generator)
            elif a.crop == "random_resized_crop":
                out["box"] = draw_resized_crop(n, *self.size, generator)
            if a.hflip:
                out["flip"] = draw_flips(n, generator)
        if self.canvas is not None and self.canvas_random:  # drawn last: the draws above
            out["canvas"] = random_offsets(n, self.canvas - self.size[0], generator)  # stay
        return out

    # -- one batch ---------------------------------------------------------------------------
    def batch(self, index: Tensor, params: Optional[dict[str, Tensor]] = None) -> Tensor:
        """The normalised float32 batch (B, C, H, W) of the samples ``index`` (on the device)
        with the augmentation ``params`` of those samples (from :meth:`draw`, on the device)."""
        params = params or {}
        a = self.augment
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if a is not None and a.crop == "random_resized_crop":
            x = self._resized_crop(index, params["box"], params.get("flip"))
        else:
            x = self._crop_flip(index, params.get("dy"), params.get("dx"), params.get("flip"),
                                a.padding if a is not None and a.crop == "pad_crop" else 0)
            # the layout change on the (uint8) gathered pixels, before the float passes; a
            # fresh tensor: .contiguous() would keep the permuted strides of a size-1 channel
            # dim (legal, but the CPU conv backward crashes on them: tests/test_resident.py)
            x = self._to_float(x.permute(0, 3, 1, 2).clone(memory_format=fmt))
        if self.down_size is not None:
            x = down_up(x, self.down_size, self.size[0])
        if self.canvas is not None:
            offsets = params.get("canvas")
            if offsets is None:
                offsets = self.canvas_offsets[index.cpu()]
            x = paste(x, offsets, self.canvas)  # black = 0 before normalisation
        return x.sub_(self.mean).div_(self.std).contiguous(memory_format=fmt)

    def _to_float(self, x: Tensor) -> Tensor:
        # as v2.ToDtype(float32, scale=True): image.to(float32).mul_(1 / 255)
        return x.to(torch.float32).mul_(1.0 / 255) if x.dtype == torch.uint8 else x.float()

    def _crop_flip(self, index: Tensor, dy: Optional[Tensor], dx: Optional[Tensor],
                   flip: Optional[Tensor], padding: int) -> Tensor:
        """(B, H, W, C) in the stored dtype, one gather from the zero-padded images: rows
        ``dy + i``, columns ``dx + j`` (reversed for a flipped sample)."""
        H, W = self.size
        if dy is None and flip is None:
            return self.images[index]
        dev, B = self.device, len(index)
        i = torch.arange(H, device=dev).expand(B, H)
        j = torch.arange(W, device=dev).expand(B, W)
        if flip is not None:
            j = torch.where(flip[:, None], W - 1 - j, j)
        images = self.images
        if dy is not None:
            i = i + dy[:, None]
            j = j + dx[:, None]
            images = self._padded(padding)
        return images[index[:, None, None], i[:, :, None], j[:, None, :]]  # B,H,W,C

    def _padded(self, padding: int) -> Tensor:
        """The images with ``padding`` zero pixels on each side (made once, kept: 1.56x the
        memory of 32x32 images at padding 4), so that a crop is one gather."""
        if getattr(self, "_pad_cache", (None, None))[0] != padding:
            p = padding
            self._pad_cache = (p, F.pad(self.images, (0, 0, p, p, p, p)) if p else self.images)
        return self._pad_cache[1]

    def _resized_crop(self, index: Tensor, box: Tensor, flip: Optional[Tensor]) -> Tensor:
        """Bilinear resampling of each box to the image size with ``grid_sample``: output pixel
        ``j`` reads the source at ``left + (j + 0.5) * w / W - 0.5``, clamped to the box."""
        H, W = self.size
        dev, B = self.device, len(index)
        x = self._to_float(self.images[index]).permute(0, 3, 1, 2)
        box = box.to(dev, torch.float32)
        top, left, h, w = box.unbind(1)
        oy = torch.arange(H, device=dev, dtype=torch.float32).expand(B, H)
        ox = torch.arange(W, device=dev, dtype=torch.float32).expand(B, W)
        if flip is not None:
            ox = torch.where(flip[:, None], W - 1 - ox, ox)
        sy = top[:, None] + (oy + 0.5) * (h / H)[:, None] - 0.5
        sx = left[:, None] + (ox + 0.5) * (w / W)[:, None] - 0.5
        sy = torch.minimum(torch.maximum(sy, top[:, None]), (top + h - 1)[:, None])
        sx = torch.minimum(torch.maximum(sx, left[:, None]), (left + w - 1)[:, None])
        gy, gx = (2 * sy + 1) / H - 1, (2 * sx + 1) / W - 1  # align_corners=False coordinates
        grid = torch.stack([gx[:, None, :].expand(B, H, W), gy[:, :, None].expand(B, H, W)], -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)


class ResidentLoader:
    """Batches of a :class:`ResidentSet` as ``(x, y)`` on its device, like a DataLoader with
    ``drop_last=False``. Each ``iter()`` draws the order (``shuffle``) and the augmentation of
    the whole pass from ``generator`` (CPU; seed it before each epoch)."""

    def __init__(self, data: ResidentSet, batch_size: int, *, shuffle: bool,
                 generator: Optional[torch.Generator] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.generator = generator if generator is not None else torch.Generator()

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, dev = len(self.data), self.data.device
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        params = self.data.draw(n, self.generator)
        order = order.to(dev, non_blocking=True)
        params = {k: v.to(dev, non_blocking=True) for k, v in params.items()}
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            batch_params = {k: v[start:start + self.batch_size] for k, v in params.items()}
            yield self.data.batch(idx, batch_params), self.data.labels[idx]


# ---------------------------------------------------------------------------------------------
# Which path, and the resident splits of a DatasetBundle.
RESIDENT_DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "tiny_imagenet")  # known here
CUDA_MEMORY_SHARE = 0.5  # at most this share of the free GPU memory goes to resident data
HOST_MEMORY_SHARE = 0.5  # an image folder on the CPU: at most this share of the available RAM


@dataclass
class ResidentBundle:
    """The splits of a :class:`~landscape.data.DatasetBundle` on the device; ``train_eval``
    shares ``train``'s tensors."""

    train: ResidentSet
    train_eval: ResidentSet
    test: ResidentSet
    holdout: Optional[ResidentSet] = None


def _source(ds):
    """(images (N, H, W, C) array or tensor, labels) of a dataset whose images can be held
    whole, or None. Subsets index their dataset's arrays (a memory-mapped cache reads only
    those images)."""
    import numpy as np
    from torch.utils.data import Subset
    from torchvision.datasets import CIFAR10, ImageFolder

    from landscape.data.cache import cached_images
    from landscape.data.datasets import TensorImageDataset, TinyImageNetVal
    from landscape.data.resize import CanvasDataset

    if isinstance(ds, CanvasDataset):  # the canvas is pasted on the device (ResidentSet)
        return _source(ds.dataset)
    folder = _folder_indices(ds)
    if folder is not None:  # an image folder: decode only the images this split holds
        base, idx = folder
        labels = torch.tensor([base.samples[i][1] for i in idx], dtype=torch.long)
        return base.fitted_images(idx), labels
    if isinstance(ds, Subset):
        inner = _source(ds.dataset)
        if inner is None:
            return None
        idx = np.asarray(list(ds.indices), dtype=np.int64)
        return inner[0][idx], inner[1][torch.from_numpy(idx)]
    if isinstance(ds, TensorImageDataset):
        return ds.images.permute(0, 2, 3, 1), ds.labels.long()
    if isinstance(ds, CIFAR10):
        return np.asarray(ds.data), torch.as_tensor(ds.targets, dtype=torch.long)
    if isinstance(ds, (ImageFolder, TinyImageNetVal)):
        paths = [Path(p) for p, _ in ds.samples]
        return cached_images(paths), torch.tensor([t for _, t in ds.samples], dtype=torch.long)
    return None


def _folder_indices(ds):
    """(the image folder, the indices of its images) of ``ds``, an image folder
    (:mod:`landscape.data.folders`) or Subsets of one; else None."""
    from torch.utils.data import Subset

    from landscape.data.folders import _ClassFolder

    if isinstance(ds, _ClassFolder):
        return ds, list(range(len(ds)))
    if isinstance(ds, Subset):
        inner = _folder_indices(ds.dataset)
        if inner is not None:
            return inner[0], [inner[1][i] for i in ds.indices]
    return None


def _is_folder(name: str) -> bool:
    from landscape.data.folders import FOLDER_DATASETS

    return name in FOLDER_DATASETS


def resident_bytes(cfg, n_images: int, in_channels: int, image_size: int) -> int:
    """Device memory of ``n_images`` resident images: uint8 for the image files, float32 for
    the datasets that are float already or are resized, and the image folders (an upper bound
    for a canvas: the stored images are the smaller pasted ones)."""
    resized = cfg.image_size or getattr(cfg, "object_size", None)
    float_images = cfg.name in ("digits", "synthetic") or resized or _is_folder(cfg.name)
    return n_images * in_channels * image_size * image_size * (4 if float_images else 1)


def _available_host_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo (Linux), else None (not known)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def estimated_bytes(cfg, bundle) -> int:
    """Device memory of the resident splits of ``bundle``."""
    n = len(bundle.train) + len(bundle.test) + (len(bundle.holdout) if bundle.holdout else 0)
    return resident_bytes(cfg, n, bundle.in_channels, bundle.image_size)


def resident_refusal(cfg, bundle, device: torch.device) -> Optional[str]:
    """Why ``bundle`` cannot be held on ``device`` (None: it can)."""
    folder = _is_folder(cfg.name)
    if cfg.name not in RESIDENT_DATASETS and not folder:
        return (f"dataset {cfg.name!r} is not one whose transforms the resident path "
                f"reproduces ({', '.join(RESIDENT_DATASETS)}, or an image folder)")
    if device.type == "cuda":
        need = estimated_bytes(cfg, bundle)
        free, _ = torch.cuda.mem_get_info(device)
        if need > CUDA_MEMORY_SHARE * free:
            return (f"its images need {need / 2**30:.2f} GiB, more than {CUDA_MEMORY_SHARE:.0%} "
                    f"of the {free / 2**30:.2f} GiB free on {device}")
    elif folder:  # a folder of your own can be of any size: held in host memory only if it fits
        need, free = estimated_bytes(cfg, bundle), _available_host_bytes()
        if free is not None and need > HOST_MEMORY_SHARE * free:
            return (f"its images need {need / 2**30:.2f} GiB, more than {HOST_MEMORY_SHARE:.0%} "
                    f"of the {free / 2**30:.2f} GiB of host memory available")
    return None


def choose_loader(requested: str, cfg, bundle, device: torch.device,
                  recorded: Optional[str] = None) -> str:
    """``"resident"`` or ``"dataloader"`` for ``data.loader=requested``. ``auto``: the path
    recorded in the run's checkpoint when it has one (a resumed run never switches), else
    resident when the dataset can be held on the device. An explicit choice that differs from
    the recorded one is an error in :func:`landscape.train.train_model`."""
    validate_loader(requested)
    if requested == "dataloader":
        return "dataloader"
    why = resident_refusal(cfg, bundle, device)
    if requested == "resident":
        if why:
            raise ValueError(f"data.loader=resident: {why}; use data.loader=dataloader or auto")
        return "resident"
    if recorded is not None:
        return recorded if recorded == "dataloader" or not why else "dataloader"
    return "dataloader" if why else "resident"


def _to_set(source, bundle, augment, settings, cfg, *, train: bool = False) -> ResidentSet:
    import numpy as np

    images, labels = source
    if isinstance(images, np.ndarray):
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # a memory-mapped cache: read it into memory
            images = np.array(images)
        images = torch.from_numpy(images)
    images = images.contiguous()
    size = stored_size(cfg)
    if images.shape[1] != size:  # resize once, as v2.Resize on float images
        x = images.permute(0, 3, 1, 2)
        x = x.float().mul_(1.0 / 255) if x.dtype == torch.uint8 else x.float()
        x = F.interpolate(x, size=(size,) * 2, mode="bilinear",
                          align_corners=False, antialias=True)
        images = x.permute(0, 2, 3, 1).contiguous()
    canvas = bundle.image_size if cfg.resize == "canvas" else None
    return ResidentSet(images.to(settings.device), labels.to(settings.device),
                       mean=bundle.mean, std=bundle.std, augment=augment,
                       channels_last=settings.channels_last,
                       down_size=cfg.down_size if cfg.resize == "down_up" else None,
                       canvas=canvas, canvas_random=train)


def resident_bundle(cfg, bundle, settings) -> ResidentBundle:
    """The splits of ``bundle`` (loaded by ``load_dataset(cfg)``) on ``settings.device``."""
    why = resident_refusal(cfg, bundle, settings.device)
    if why:
        raise ValueError(f"data.loader=resident: {why}; use data.loader=dataloader or auto")
    train = _to_set(_source(bundle.train), bundle, Augmentation.from_config(cfg, train=True),
                    settings, cfg, train=True)
    test = _to_set(_source(bundle.test), bundle, None, settings, cfg)
    holdout = (_to_set(_source(bundle.holdout), bundle, None, settings, cfg)
               if bundle.holdout is not None else None)
    return ResidentBundle(train, train.evaluation(), test, holdout)
