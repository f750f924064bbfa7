"""Images of your own as a dataset (landscape.data.register_image_folder; README's example
tests/user_dataset.py) and the built-in Imagenette, on generated trees in ImageFolder's
layout: labels, the centre crop, the checks before anything runs, and a run end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from landscape import pipeline, results
from landscape.cli.submit import expand_grid
from landscape.data import (
    DataConfig, DatasetNotFoundError, check_dataset, load_dataset, register_image_folder,
)
from landscape.data import registry
from landscape.grid import status_table
from landscape.identity import identify

CLASSES = ("ash", "birch", "oak")
SIZES = ((30, 20), (20, 36), (24, 24), (41, 27))  # (width, height), most not square


def make_tree(root: Path, folder: str = "leaves", classes=CLASSES, n_train: int = 8,
              n_test: int = 4, ext: str = "png") -> Path:
    """<root>/<folder>/{train,val}/<class>/<i>.<ext>: each class its own colour plus noise,
    images of several sizes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_test)):
        for c, name in enumerate(classes):
            d = root / folder / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = SIZES[i % len(SIZES)]
                base = np.zeros(3)
                base[c % 3] = 200
                img = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.{ext}")
    return root


@pytest.fixture
def leaves(monkeypatch):
    """tests/user_dataset.py imported afresh; its registration gone afterwards."""
    monkeypatch.setattr(registry.DATASETS, "_items", dict(registry.DATASETS._items))
    sys.modules.pop("tests.user_dataset", None)
    yield "tests.user_dataset"
    sys.modules.pop("tests.user_dataset", None)


def _load(root, **kw):
    __import__("tests.user_dataset")
    return load_dataset(DataConfig(name="leaves", root=str(root), **kw))


def test_a_folder_per_class_loads_with_the_training_splits_labels(tmp_path, leaves):
    make_tree(tmp_path)
    b = _load(tmp_path, augment=False)
    assert (len(b.train), len(b.test), b.num_classes, b.in_channels) == (24, 12, 3, 3)
    assert b.image_size == 24 and b.mean == (0.5,) * 3
    labels = [y for _, y in b.test]
    assert labels == [0] * 4 + [1] * 4 + [2] * 4  # sorted class folders
    # The centre crop of the shorter side resized to 24, normalised: torchvision's own ops
    # on the decoded file.
    path, label = b.test.samples[4]
    with Image.open(path) as im:
        ref = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                          v2.Resize(24, antialias=True), v2.CenterCrop(24),
                          v2.Normalize([0.5] * 3, [0.25] * 3)])(im.convert("RGB"))
    x, y = b.test[4]
    assert y == label == 1 and x.shape == (3, 24, 24) and torch.equal(x, ref)
    squashed = v2.Resize((24, 24), antialias=True)(
        v2.ToDtype(torch.float32, scale=True)(v2.ToImage()(Image.open(path).convert("RGB"))))
    assert not torch.allclose(x, (squashed - 0.5) / 0.25)  # a 30 x 20 image: cropped
    assert _load(tmp_path, image_size=16).train[0][0].shape == (3, 16, 16)

    # A test split without a class keeps the training split's labels.
    for p in (tmp_path / "leaves" / "val" / "ash").iterdir():
        p.unlink()
    (tmp_path / "leaves" / "val" / "ash").rmdir()
    assert [y for _, y in _load(tmp_path).test] == [1] * 4 + [2] * 4


def test_the_checks_say_where_they_looked_and_what_to_change(tmp_path, leaves):
    __import__("tests.user_dataset")
    cfg = DataConfig(name="leaves", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError,
                       match=r"no folder .*nowhere/leaves/train.*data\.root"):
        check_dataset(cfg)
    make_tree(tmp_path)
    cfg = DataConfig(name="leaves", root=str(tmp_path))
    check_dataset(cfg)
    (tmp_path / "leaves" / "val" / "elm").mkdir()
    with pytest.raises(ValueError, match=r"val has class folders that .*train does not: elm"):
        check_dataset(cfg)
    (tmp_path / "leaves" / "train" / "elm").mkdir()
    with pytest.raises(ValueError, match="has 4 class folders .* num_classes=3"):
        check_dataset(cfg)
    for split in ("train", "val"):
        (tmp_path / "leaves" / split / "elm").rmdir()
    assert registry._TRAIN_SIZES["leaves"](cfg) == 24
    with pytest.raises(ValueError, match="data.holdout=24 leaves no training images"):
        check_dataset(DataConfig(name="leaves", root=str(tmp_path), holdout=24))


def test_a_tree_without_images_is_refused_by_name(tmp_path, leaves):
    for split in ("train", "val"):
        for c in CLASSES:
            (tmp_path / "leaves" / split / c).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no image files in .*leaves/train"):
        _load(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    ({"fit": "stretch"}, r"fit must be one of \('squash', 'center_crop'\)"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"image_size": 24.0}, "image_size must be a positive integer"),
    ({"mean": (0.5, 0.5)}, r"mean must be three numbers \(R, G, B\)"),
    ({"std": (0.2, 0.0, 0.2)}, "std must be > 0"),
    ({"test": "train"}, "train and test must be two different folder names"),
    ({"folder": ""}, "folder must be a non-empty folder name"),
])
def test_a_registration_that_cannot_work_names_its_argument(leaves, kwargs, match):
    args = {"folder": "x", "image_size": 24, "num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=r"register_image_folder\('mine', \.\.\.\): " + match):
        register_image_folder("mine", **args)
    with pytest.raises(ValueError, match="a dataset 'digits' is already registered"):
        register_image_folder("digits", folder="x", image_size=8, num_classes=10)


def test_a_run_on_your_own_images_trains_and_prunes_with_the_name_in_its_rows(tmp_path,
                                                                             leaves,
                                                                             monkeypatch):
    make_tree(tmp_path / "data", n_train=12)
    [cfg] = expand_grid(["model=small_cnn", "model.width=0.5", f"imports=[{leaves}]",
                         "data=folder", "data.name=leaves", f"data.root={tmp_path / 'data'}",
                         "train.epochs=2", "device=cpu",
                         "num_threads=1", "progress=false", f"results_root={tmp_path / 'out'}",
                         "prune.enabled=true", "prune.rates=[0.5]"])
    out = pipeline.run(cfg)  # imports the module, then identifies the run
    assert identify(cfg).cell_name.startswith("small_cnn-w0.5-leaves-pool0-")
    assert (cfg.data.crop, cfg.data.hflip, cfg.data.num_workers) == ("random_resized_crop", True,
                                                                      None)
    assert out.ran[:2] == ["receptive_field", "train"] and any(u.startswith("prune")
                                                               for u in out.ran)
    df = results.load(tmp_path / "out")
    assert set(df["dataset"]) == {"leaves"}
    acc = df[(df.stage == "train") & (df.metric == "test_acc")]
    assert len(acc) == 2 and acc["value"].between(0, 1).all()
    assert pipeline.run(cfg).ran == []
    # landscape-status imports no user module: it reads the store without the dataset.
    monkeypatch.delitem(registry.DATASETS._items, "leaves")
    table = status_table(tmp_path / "out")
    assert len(table) >= 3 and (table["done"] == table["runs"]).all()


def test_imagenette_reads_its_published_layout(tmp_path):
    wnids = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916",
             "n03417042", "n03425413", "n03445777", "n03888605")
    make_tree(tmp_path, folder="imagenette2-160", classes=wnids, n_train=2, n_test=1,
              ext="JPEG")
    b = load_dataset(DataConfig(name="imagenette", root=str(tmp_path), image_size=32))
    assert (len(b.train), len(b.test), b.num_classes, b.image_size) == (20, 10, 10, 32)
    assert b.mean == (0.485, 0.456, 0.406) and b.train[0][0].shape == (3, 32, 32)
    assert [y for _, y in b.test] == list(range(10))
    with pytest.raises(DatasetNotFoundError, match="fast-ai-imageclas/imagenette2-160.tgz"):
        check_dataset(DataConfig(name="imagenette", root=str(tmp_path / "empty")))


def test_the_resident_path_holds_the_images_the_dataloader_path_reads(tmp_path, leaves,
                                                                       monkeypatch):
    """Decoded once and fitted as the DataLoader path does it: the same evaluation batches,
    bit for bit, for every split (a training subset and a holdout decode only theirs) and
    input-size protocol; the
    training batches are augmented on the device; auto takes it unless the images need more
    than half the available host memory."""
    from landscape.data import resident
    from landscape.data.resident import choose_loader, resident_bundle
    from landscape.device import device_settings
    from landscape.train import make_loader

    cpu = device_settings(torch.device("cpu"))
    make_tree(tmp_path)
    __import__("tests.user_dataset")
    for cfg in (DataConfig(name="leaves", root=str(tmp_path), crop="random_resized_crop"),
                DataConfig(name="leaves", root=str(tmp_path), train_subset=20, holdout=5,
                           image_size=16),
                DataConfig(name="leaves", root=str(tmp_path), resize="canvas", object_size=16,
                           image_size=32),
                DataConfig(name="leaves", root=str(tmp_path), resize="down_up", down_size=12)):
        b = load_dataset(cfg)
        rb = resident_bundle(cfg, b, cpu)
        for ds, rs in ((b.test, rb.test), (b.train_eval, rb.train_eval), (b.holdout, rb.holdout)):
            if ds is None:
                continue
            xd = torch.cat([x for x, _ in make_loader(ds, 7, cpu, shuffle=False)])
            yd = torch.cat([y for _, y in make_loader(ds, 7, cpu, shuffle=False)])
            xr = torch.cat([x for x, _ in make_loader(rs, 7, cpu, shuffle=False)])
            yr = torch.cat([y for _, y in make_loader(rs, 7, cpu, shuffle=False)])
            assert len(xd) == len(ds) and torch.equal(xd, xr) and torch.equal(yd, yr)
        x, y = next(iter(make_loader(rb.train, 8, cpu, shuffle=True,
                                     generator=torch.Generator().manual_seed(0))))
        side = cfg.image_size or 24
        assert x.shape == (8, 3, side, side) and not torch.equal(x, xd[:8])
    assert choose_loader("auto", cfg, b, torch.device("cpu")) == "resident"
    monkeypatch.setattr(resident, "_available_host_bytes", lambda: 10_000)
    assert choose_loader("auto", cfg, b, torch.device("cpu")) == "dataloader"
    with pytest.raises(ValueError, match=r"data.loader=resident: its images need .* GiB, more "
                                         r"than 50% of the .* GiB of host memory available"):
        choose_loader("resident", cfg, b, torch.device("cpu"))
