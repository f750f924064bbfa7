"""The device-resident data path (landscape.data.resident): the same augmentation distribution
as the per-image DataLoader path, reproducible batches, CPU fallbacks, the uint8 image cache."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from landscape.data import DataConfig, load_dataset
from landscape.data.cache import cache_files, cached_images
from landscape.data.registry import validate_data_config
from landscape.data.resident import (
    Augmentation, ResidentLoader, ResidentSet, choose_loader, draw_resized_crop, resident_bundle,
)
from landscape.data.transforms import image_transforms
from landscape.device import device_settings
from landscape.models import create_model
from landscape.train import (
    TrainConfig, default_workers, make_loader, recorded_data_path, train_model,
)
from tests.test_data import make_cifar10_tree, make_cifar100_tree, make_tiny_imagenet_tree

CPU = device_settings(torch.device("cpu"))
H = W = 16
PAD = 4


def _coded_images(n: int = 1) -> np.ndarray:
    """uint8 NHWC images whose pixel (i, j) is (i + 1, j + 1, 7): a crop's offset and a flip
    can be read off the output."""
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    img = np.stack([i + 1, j + 1, np.full_like(i, 7)], -1).astype(np.uint8)
    return np.repeat(img[None], n, 0)


def _offsets_and_flips(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx, flip) of un-normalised (mean 0, std 1) crops of :func:`_coded_images`, read at
    the centre pixel (always inside the image for PAD <= H/2)."""
    v = (x * 255).round().long()
    c = H // 2
    row = v[:, 0, c, c] - 1
    left, right = v[:, 1, c, c - 1], v[:, 1, c, c + 1]
    flip = (left > right).numpy()
    col = v[:, 1, c, c] - 1
    dy = row - c + PAD
    dx = torch.where(torch.from_numpy(flip), col - (W - 1 - c) + PAD, col - c + PAD)
    return dy.numpy(), dx.numpy(), flip


def _uniform(values: np.ndarray, k: int) -> float:
    counts = np.bincount(values, minlength=k)
    assert len(counts) == k, f"values outside [0, {k})"
    return stats.chisquare(counts).pvalue


def test_crop_offsets_and_flips_are_uniform_on_both_paths():
    n = 3000
    cfg = DataConfig(crop="pad_crop", crop_padding=PAD, hflip=True)
    # the DataLoader path: the real per-image transforms (from PIL), a fixed torch seed
    tf = image_transforms(cfg, train=True, size=H, mean=(0.0,) * 3, std=(1.0,) * 3,
                          resize=False, from_pil=True)
    pil = Image.fromarray(_coded_images()[0])
    torch.manual_seed(0)
    per_image = torch.stack([tf(pil) for _ in range(n)])
    # the resident path
    ds = ResidentSet(torch.from_numpy(_coded_images(n)), torch.zeros(n), mean=(0.0,) * 3,
                     std=(1.0,) * 3, augment=Augmentation.from_config(cfg, train=True))
    loader = ResidentLoader(ds, 512, shuffle=True, generator=torch.Generator().manual_seed(0))
    resident = torch.cat([x for x, _ in loader])
    for x in (per_image, resident):
        dy, dx, flip = _offsets_and_flips(x)
        for offsets in (dy, dx):
            assert _uniform(offsets, 2 * PAD + 1) > 1e-3
        assert stats.binomtest(int(flip.sum()), n).pvalue > 1e-3


def test_a_resident_crop_is_bit_identical_to_v2_for_the_same_draws():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, H, W, 3), dtype=torch.uint8, generator=g)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    ds = ResidentSet(images, torch.arange(6), mean=mean, std=std,
                     augment=Augmentation("pad_crop", PAD, True))
    params = ds.draw(6, g)
    params["flip"][:2] = torch.tensor([True, False])
    idx = torch.tensor([5, 0, 3, 1, 2, 4])
    out = ds.batch(idx, params)
    for k, i in enumerate(idx.tolist()):
        x = TF.to_dtype(images[i].permute(2, 0, 1), torch.float32, scale=True)
        x = TF.pad(x, [PAD])
        x = TF.crop(x, int(params["dy"][k]), int(params["dx"][k]), H, W)
        if params["flip"][k]:
            x = TF.horizontal_flip(x)
        assert torch.equal(out[k], TF.normalize(x, list(mean), list(std)))


def test_resized_crop_boxes_follow_torchvision():
    n = 4000
    g = torch.Generator().manual_seed(0)
    ours = draw_resized_crop(n, 64, 64, g).double()
    torch.manual_seed(0)
    img = torch.zeros(3, 64, 64)
    ref = torch.tensor([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
                        for _ in range(n)]).double()
    for boxes in (ours, ref):
        top, left, h, w = boxes.unbind(1)
        area = h * w / 64 ** 2
        assert ((area > 0.07) & (area <= 1)).all()  # 0.08 up to rounding of h and w
        assert ((w / h >= 0.7) & (w / h <= 1.43)).all()
        assert ((top >= 0) & (top + h <= 64) & (left >= 0) & (left + w <= 64)).all()
    names = ("top", "left", "h", "w")
    for k, name in enumerate(names):
        assert stats.ks_2samp(ours[:, k], ref[:, k]).pvalue > 1e-3, name
    # an image whose aspect no try can meet: torchvision's fallback (central crop) in both
    g = torch.Generator().manual_seed(0)
    narrow = draw_resized_crop(2000, 2, 64, g)
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.zeros(3, 2, 64), [0.08, 1.0],
                                                     [3 / 4, 4 / 3]) for _ in range(2000)])
    for boxes in (narrow, ref):  # h=2, w=round(2 * 4/3), centred
        assert set(map(tuple, boxes.tolist())) == {(0, 30, 2, 3)}


def test_a_resident_resized_crop_matches_v2_resized_crop():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (8, 20, 20, 3), dtype=torch.uint8, generator=g)
    ds = ResidentSet(images, torch.arange(8), mean=(0.0,) * 3, std=(1.0,) * 3,
                     augment=Augmentation("random_resized_crop", 0, True))
    params = ds.draw(8, g)
    params["box"][0] = torch.tensor([0, 0, 20, 20])  # the identity box
    params["box"][1] = torch.tensor([3, 5, 4, 9])  # a small, wide one (strong upsampling)
    out = ds.batch(torch.arange(8), params)
    for k in range(8):
        x = TF.to_dtype(images[k].permute(2, 0, 1), torch.float32, scale=True)
        top, left, h, w = params["box"][k].tolist()
        x = TF.resized_crop(x, top, left, h, w, [20, 20], antialias=True)
        if params["flip"][k]:
            x = TF.horizontal_flip(x)
        torch.testing.assert_close(out[k], x, atol=2e-6, rtol=0)


def test_fixed_seed_gives_identical_batches_and_another_seed_others():
    b = load_dataset(DataConfig(name="synthetic", image_size=8, train_subset=100))
    rb = resident_bundle(DataConfig(name="synthetic", image_size=8, train_subset=100), b, CPU)

    def epoch(seed):
        loader = make_loader(rb.train, 32, CPU, shuffle=True,
                             generator=torch.Generator().manual_seed(seed))
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b2, c = epoch(7), epoch(7), epoch(8)
    assert [len(y) for _, y in a] == [32, 32, 32, 4]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b2))
    assert not torch.equal(a[0][0], c[0][0])


def _small_cnn():
    torch.manual_seed(0)
    return create_model("small_cnn", num_classes=10, width=0.25)


class _Kill(Exception):
    pass


def test_resident_training_resumes_to_identical_weights(tmp_path):
    cfg_d = DataConfig(name="synthetic", image_size=8, train_subset=96, test_subset=32)
    rb = resident_bundle(cfg_d, load_dataset(cfg_d), CPU)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    full = _small_cnn()
    out = train_model(full, rb.train, rb.test, cfg, seed=0, settings=CPU,
                      checkpoint_dir=tmp_path / "full", progress=False)
    assert out.data_path == "resident"

    def kill_after_first(record):
        if record.epoch == 1:
            raise _Kill  # after last.pt of epoch 1 is written

    with pytest.raises(_Kill):
        train_model(_small_cnn(), rb.train, rb.test, cfg, seed=0, settings=CPU,
                    checkpoint_dir=tmp_path / "killed", progress=False, on_epoch=kill_after_first)
    assert recorded_data_path(tmp_path / "killed") == "resident"
    b = load_dataset(cfg_d)
    with pytest.raises(ValueError, match=r"resident data path.*data\.loader=resident"):
        train_model(_small_cnn(), b.train, b.test, cfg, seed=0, settings=CPU,
                    checkpoint_dir=tmp_path / "killed", progress=False)
    resumed = _small_cnn()
    out2 = train_model(resumed, rb.train, rb.test, cfg, seed=0, settings=CPU,
                       checkpoint_dir=tmp_path / "killed", progress=False)
    assert out2.resumed_from_epoch == 1
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.train_loss for r in out.history] == [r.train_loss for r in out2.history]


def test_cpu_keeps_resident_tensors_on_the_cpu_without_cuda_paths(monkeypatch):
    cfg = DataConfig(name="synthetic", image_size=8, train_subset=40, test_subset=8)
    b = load_dataset(cfg)
    assert not CPU.pin_memory and not CPU.channels_last
    rb = resident_bundle(cfg, b, CPU)
    x, y = next(iter(make_loader(rb.train, 16, CPU, shuffle=True)))
    assert x.device.type == "cpu" and x.is_contiguous() and x.dtype == torch.float32
    assert rb.train_eval.images is rb.train.images  # shared, not copied
    assert default_workers(None, torch.device("cpu")) == 0
    assert default_workers(3, torch.device("cpu")) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    assert default_workers(None, torch.device("cuda")) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    assert default_workers(None, torch.device("cuda")) == 1
    # auto: resident on the CPU; on CUDA only when the images fit in the free memory
    assert choose_loader("auto", cfg, b, torch.device("cpu")) == "resident"
    assert choose_loader("auto", cfg, b, torch.device("cpu"), recorded="dataloader") == "dataloader"
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10_000, 10**9))
    assert choose_loader("auto", cfg, b, torch.device("cuda")) == "dataloader"
    with pytest.raises(ValueError, match=r"data.loader=resident: .*GiB.*free on cuda"):
        choose_loader("resident", cfg, b, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**9, 10**9))
    assert choose_loader("auto", cfg, b, torch.device("cuda")) == "resident"
    with pytest.raises(ValueError, match=r"data\.loader=resident: dataset 'mine'"):
        choose_loader("resident", dataclasses.replace(cfg, name="mine"), b, torch.device("cpu"))


def test_bad_loader_value_is_one_line_naming_the_field():
    with pytest.raises(ValueError) as e:
        validate_data_config(DataConfig(loader="gpu"))
    assert str(e.value) == ("data.loader must be one of ('auto', 'resident', 'dataloader'), "
                            "got 'gpu'")


def _eval_batches(loader):
    return torch.cat([x for x, _ in loader]), torch.cat([y for _, y in loader])


def test_resident_evaluation_batches_equal_the_dataloader_path(tmp_path):
    make_cifar10_tree(tmp_path / "c", per_batch=6)
    make_cifar100_tree(tmp_path / "h")
    make_tiny_imagenet_tree(tmp_path / "t")
    for cfg in (DataConfig(name="cifar10", root=str(tmp_path / "c"), verify_md5=False,
                           holdout=5),
                DataConfig(name="cifar100", root=str(tmp_path / "h"), verify_md5=False),
                DataConfig(name="tiny_imagenet", root=str(tmp_path / "t")),
                DataConfig(name="digits", train_subset=50, test_subset=20)):
        b = load_dataset(cfg)
        rb = resident_bundle(cfg, b, CPU)
        for ds, rs in ((b.test, rb.test), (b.train_eval, rb.train_eval), (b.holdout, rb.holdout)):
            if ds is None:
                continue
            xd, yd = _eval_batches(make_loader(ds, 7, CPU, shuffle=False))
            xr, yr = _eval_batches(make_loader(rs, 7, CPU, shuffle=False))
            assert torch.equal(xd, xr) and torch.equal(yd, yr), cfg.name


def test_uint8_cache_pixels_equal_the_decoded_images(tmp_path, monkeypatch, caplog):
    make_tiny_imagenet_tree(tmp_path)
    train = tmp_path / "tiny-imagenet-200" / "train"
    paths = sorted(train.glob("*/images/*.JPEG"))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        paths[0])  # not a flat colour: JPEG artefacts and all
    images = cached_images(paths)
    npy, meta = cache_files(train)
    assert npy == train.parent / "train.uint8.npy" and npy.exists()
    assert np.load(npy, allow_pickle=False).dtype == np.uint8
    for p, a in zip(paths, images):
        with Image.open(p) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), a)
    # a changed tree is decoded again
    Image.new("RGB", (64, 64), (1, 2, 3)).save(paths[1])
    os.utime(paths[1], ns=(1, 2 * 10**18))
    assert json.loads(meta.read_text())["newest_mtime_ns"] != 2 * 10**18
    with Image.open(paths[1]) as im:
        assert np.array_equal(cached_images(paths)[1], np.asarray(im.convert("RGB")))
    assert not np.array_equal(images[1], cached_images(paths)[1])
    assert json.loads(meta.read_text())["newest_mtime_ns"] == 2 * 10**18
    # a read-only data folder: the cache goes to $LANDSCAPE_CACHE, with a warning
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setattr("landscape.data.cache._writable", lambda folder: False)
    with caplog.at_level("WARNING", logger="landscape"):
        again = cached_images(paths)
    assert "not writable" in caplog.text and str(tmp_path / "elsewhere") in caplog.text
    assert np.array_equal(again, cached_images(paths))
    assert cache_files(train)[0].parent.parent == tmp_path / "elsewhere"


@pytest.mark.parametrize("channels", [1, 3])
def test_resident_batches_have_the_standard_strides_and_train(channels):
    """A single-channel image batch made by permuting NHWC keeps odd (legal) strides under
    .contiguous(); the CPU conv backward crashed the process on them (digits, the demo). Every
    batch must have the strides of a fresh NCHW tensor, the short last batch included."""
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(37, H, W, channels, generator=gen) * 255).to(torch.uint8)
    data = ResidentSet(images, torch.arange(37) % 3, mean=[0.5] * channels,
                       std=[0.25] * channels, augment=Augmentation("pad_crop", 2, True))
    model = create_model("resnet18", width=0.125, pool_level=0, num_classes=3,
                         in_channels=channels)
    for x, y in ResidentLoader(data, 16, shuffle=True, generator=gen):
        assert x.stride() == torch.empty(x.shape).stride()
        torch.nn.functional.cross_entropy(model(x), y).backward()
