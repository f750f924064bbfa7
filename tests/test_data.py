import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from landscape.data import DataConfig, DatasetNotFoundError, list_datasets, load_dataset
from landscape.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from landscape.registry import UnknownNameError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10_tree(root: Path, per_batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 in the exact on-disk format of cifar-10-python.tar.gz."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}, f)
        arrays[name] = (data, labels)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return arrays


def make_cifar100_tree(root: Path, n_train: int = 12, n_test: int = 5,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny CIFAR-100 in the exact on-disk format of cifar-100-python.tar.gz: ``train`` and
    ``test`` pickles with fine and coarse labels, and ``meta``."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    arrays = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(x) for x in rng.integers(0, 100, size=n)]
        with open(base / name, "wb") as f:
            pickle.dump({"filenames": [f"{name}_{i}.png" for i in range(n)],
                         "batch_label": f"{name} batch 1 of 1", "fine_labels": fine,
                         "coarse_labels": [c // 5 for c in fine], "data": data}, f)
        arrays[name] = (data, fine)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(100)],
                     "coarse_label_names": [f"super_{i}" for i in range(20)]}, f)
    return arrays


def make_tiny_imagenet_tree(root: Path, wnids=("n01443537", "n01629819", "n01641577"),
                            per_class: int = 3, val: int = 4) -> list[tuple[str, str, int]]:
    """A tiny Tiny-ImageNet-200 tree: train/<wnid>/images/*.JPEG, val/images + annotations."""
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # file order != sorted
    colours = {}
    for c, w in enumerate(wnids):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        colours[w] = (40 + 80 * c, 200 - 60 * c, 100)
        for i in range(per_class):
            Image.new("RGB", (64, 64), colours[w]).save(d / f"{w}_{i}.JPEG", quality=95)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    ann = []
    for i in range(val):
        w = wnids[i % len(wnids)]
        Image.new("RGB", (64, 64), colours[w]).save(base / "val" / "images" / f"val_{i}.JPEG")
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return ann


def test_registry_and_unknown_name():
    assert {"cifar10", "tiny_imagenet", "digits", "synthetic"} <= set(list_datasets())
    with pytest.raises(UnknownNameError, match="unknown dataset 'mnist'.*cifar10.*digits"):
        load_dataset(DataConfig(name="mnist"))


def test_cifar10_loader_reads_the_real_format(tmp_path):
    arrays = make_cifar10_tree(tmp_path)
    b = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), augment=False,
                                    verify_md5=False))
    assert (len(b.train), len(b.test), b.num_classes, b.in_channels, b.image_size) == (20, 4, 10, 3, 32)
    data, labels = arrays["test_batch"]
    x, y = b.test[2]
    expected = torch.from_numpy(data[2].reshape(3, 32, 32).astype(np.float32) / 255)
    expected = (expected - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[:, None, None]
    assert y == labels[2]
    torch.testing.assert_close(x, expected)
    # train split = the five data batches in order
    assert b.train[4][1] == arrays["data_batch_2"][1][0]


def test_cifar10_augmentation_is_crop_and_flip(tmp_path):
    make_cifar10_tree(tmp_path)
    b = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), verify_md5=False))
    x0, _ = b.train_eval[0]
    torch.manual_seed(1)
    xs = [b.train[0][0] for _ in range(8)]
    assert all(x.shape == (3, 32, 32) for x in xs)
    assert any(not torch.equal(x, x0) for x in xs)  # augmentation changes the image
    assert torch.equal(b.train_eval[0][0], x0)  # the eval view does not


def test_cifar10_missing_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py.*data\.download=true"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def test_cifar100_loader_reads_the_real_format_and_its_fine_labels(tmp_path):
    from landscape.data.registry import check_dataset, dataset_info
    from landscape.data.transforms import CIFAR100_MEAN, CIFAR100_STD

    with pytest.raises(DatasetNotFoundError, match=r"CIFAR-100 not found: .*cifar-100-python.*"
                                                   r"data\.download=true.*cifar-100-python"):
        check_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    arrays = make_cifar100_tree(tmp_path)
    cfg = DataConfig(name="cifar100", root=str(tmp_path), augment=False, verify_md5=False)
    info = dataset_info(cfg)
    assert (info.num_classes, info.in_channels, info.image_size) == (100, 3, 32)
    b = load_dataset(cfg)
    assert (len(b.train), len(b.test), b.num_classes, b.mean) == (12, 5, 100, CIFAR100_MEAN)
    data, fine = arrays["test"]
    x, y = b.test[3]
    expected = torch.from_numpy(data[3].reshape(3, 32, 32).astype(np.float32) / 255)
    mean, std = (torch.tensor(v)[:, None, None] for v in (CIFAR100_MEAN, CIFAR100_STD))
    torch.testing.assert_close(x, (expected - mean) / std)
    assert y == fine[3] and [b.train[i][1] for i in range(12)] == arrays["train"][1]
    with pytest.raises(ValueError, match=r"data.holdout=12 leaves no training images"):
        check_dataset(DataConfig(name="cifar100", root=str(tmp_path), verify_md5=False,
                                 holdout=12))  # the tree's own count
    with pytest.raises(DatasetNotFoundError, match="not the published CIFAR-100 file"):
        check_dataset(DataConfig(name="cifar100", root=str(tmp_path)))  # md5 on by default


def test_tiny_imagenet_loader_reads_the_real_format(tmp_path):
    ann = make_tiny_imagenet_tree(tmp_path)
    b = load_dataset(DataConfig(name="tiny_imagenet", root=str(tmp_path), augment=False))
    assert (len(b.train), len(b.test), b.num_classes, b.image_size) == (9, 4, 3, 64)
    wnids = sorted(["n01443537", "n01629819", "n01641577"])
    for i, line in enumerate(ann):
        assert b.test[i][1] == wnids.index(line.split("\t")[1])
    # train and val labels agree: same colour image -> same label
    by_label = {}
    for x, y in list(b.train) + list(b.test):
        by_label.setdefault(y, []).append(x.mean(dim=(1, 2)))
    for y, means in by_label.items():
        spread = torch.stack(means).std(0).max()
        assert spread < 0.05, (y, spread)


def test_tiny_imagenet_missing_and_malformed(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"wnids\.txt.*tiny-imagenet-200\.zip"):
        load_dataset(DataConfig(name="tiny_imagenet", root=str(tmp_path)))
    make_tiny_imagenet_tree(tmp_path)
    p = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    p.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="line 1"):
        load_dataset(DataConfig(name="tiny_imagenet", root=str(tmp_path)))


def test_digits_fixed_stratified_split():
    a = load_dataset(DataConfig(name="digits", image_size=16))
    b = load_dataset(DataConfig(name="digits", image_size=16))
    assert (len(a.train), len(a.test), a.in_channels, a.image_size) == (1437, 360, 1, 16)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    counts = torch.bincount(a.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified 20% of ~180 per class
    x, _ = a.train_eval[0]
    assert x.shape == (1, 16, 16)
    # normalised with the training split's statistics
    xs = torch.stack([a.train_eval[i][0] for i in range(len(a.train_eval))])
    assert abs(float(xs.mean())) < 1e-4 and abs(float(xs.std()) - 1) < 1e-3


def test_digits_subset_is_balanced():
    b = load_dataset(DataConfig(name="digits", train_subset=100, test_subset=50))
    assert len(b.train) == 100 and len(b.test) == 50
    assert torch.bincount(b.train.labels, minlength=10).tolist() == [10] * 10


def test_synthetic_is_deterministic_and_independent_of_global_rng():
    torch.manual_seed(1)
    a = load_dataset(DataConfig(name="synthetic", image_size=8, train_subset=32, test_subset=16))
    torch.manual_seed(2)
    b = load_dataset(DataConfig(name="synthetic", image_size=8, train_subset=32, test_subset=16))
    assert torch.equal(a.train.images, b.train.images)
    assert a.train[0][0].shape == (3, 8, 8) and len(a.test) == 16


def test_bad_data_fields():
    with pytest.raises(ValueError, match="data.train_subset"):
        load_dataset(DataConfig(name="digits", train_subset=0))


def test_a_corrupted_or_truncated_cifar_batch_is_named(tmp_path):
    make_cifar10_tree(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_1 is not the published "
                                                    r"CIFAR-10 file \(md5 differs"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))  # md5 on by default
    batch.write_bytes(batch.read_bytes()[:100])  # truncated
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_3 cannot be read .*truncated"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), verify_md5=False))


def test_cifar10_holdout_is_checked_against_the_trees_own_training_images(tmp_path):
    from landscape.data.registry import check_dataset

    make_cifar10_tree(tmp_path, per_batch=4)  # 5 batches: 20 training images, not 50,000
    cfg = DataConfig(name="cifar10", root=str(tmp_path), verify_md5=False, holdout=20)
    with pytest.raises(ValueError, match=r"data.holdout=20 leaves no training images \(the "
                       r"training split has 20\)"):
        check_dataset(cfg)
    check_dataset(DataConfig(name="cifar10", root=str(tmp_path), verify_md5=False, holdout=19))


def test_cifar10_validation_unpickles_each_batch_once(tmp_path, monkeypatch):
    """The readability check and the training-set count share one unpickling per file."""
    import pickle

    from landscape.data import datasets
    from landscape.data.registry import check_dataset

    make_cifar10_tree(tmp_path, per_batch=4)
    loads = []
    real = pickle.load
    monkeypatch.setattr(datasets.pickle, "load", lambda f, **kw: loads.append(f.name) or
                        real(f, **kw))
    check_dataset(DataConfig(name="cifar10", root=str(tmp_path), verify_md5=False, holdout=19))
    assert sorted(loads) == sorted(set(loads)) and len(loads) == 7  # 5 + test + meta
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:100])  # a changed file is read again, and refused
    with pytest.raises(DatasetNotFoundError, match="data_batch_2 cannot be read"):
        check_dataset(DataConfig(name="cifar10", root=str(tmp_path), verify_md5=False))
