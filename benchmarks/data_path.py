"""Data path: images/s of the device-resident batches vs the per-image DataLoader path.

    python -m benchmarks.data_path [--quick] [--images 20000] [--threads 1]

The same generated CIFAR-10-format tree (uint8 32x32x3, read through the real ``cifar10``
loader), the same augmentation (random crop with 4 pixels of zero padding, horizontal flip,
normalisation), batch size 128. Sides: the resident path (``landscape.data.resident``, on the
CPU here) and the DataLoader with torchvision v2 per-image transforms from PIL images with 0
and 2 worker processes. Each side produces one full epoch of batches, best of ``--repeats``.
Before timing, both paths' evaluation batches (no augmentation) must be identical, so both
read the same pixels. Then the share of a training step spent waiting for data: a small CNN
(small_cnn, width 1/4) trained for one epoch from each path, the time blocked on the next
batch over the epoch's time. Target (issue 18): resident >= 10x the 0-worker path.
"""

from __future__ import annotations

import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import epoch_seconds, make_parser, parse
from landscape.data import DataConfig, load_dataset
from landscape.data.resident import resident_bundle
from landscape.device import device_settings
from landscape.models import create_model
from landscape.train import make_loader

BATCH = 128


def _cifar_tree(root: Path, n: int, n_test: int = 1000) -> None:
    """A CIFAR-10-format tree with ``n`` training images (5 batches) and ``n_test`` test
    images (uniform random pixels and labels)."""
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    per = -(-n // 5)
    for name, k in [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch", n_test)]:
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": rng.integers(0, 10, k).tolist(),
                         "data": rng.integers(0, 256, (k, 3072), dtype=np.uint8),
                         "filenames": [f"{i}.png" for i in range(k)]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)


def _wait_share(loader) -> tuple[float, float]:
    """(share of the epoch blocked on the next batch, images/s) of one training epoch."""
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, width=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    wait, n = 0.0, 0
    t_start = time.perf_counter()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    total = time.perf_counter() - t_start
    return wait / total, n / total


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "2,000 images, one repeat", threads=1)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse(parser, argv)
    n, repeats = (2_000, 1) if args.quick else (args.images, args.repeats)
    cpu = device_settings(torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        _cifar_tree(Path(d), n)
        cfg = DataConfig(name="cifar10", root=d, verify_md5=False, crop_padding=4)
        bundle = load_dataset(cfg)
        resident = resident_bundle(cfg, bundle, cpu)
        n = len(bundle.train)
        a = torch.cat([x for x, _ in make_loader(bundle.test, 500, cpu, shuffle=False)])
        b = torch.cat([x for x, _ in make_loader(resident.test, 500, cpu, shuffle=False)])
        same = torch.equal(a, b)
        loaders = {
            "resident": lambda: make_loader(resident.train, BATCH, cpu, shuffle=True,
                                            generator=torch.Generator()),
            "dataloader_0_workers": lambda: make_loader(bundle.train, BATCH, cpu, shuffle=True,
                                                        num_workers=0,
                                                        generator=torch.Generator()),
            "dataloader_2_workers": lambda: make_loader(bundle.train, BATCH, cpu, shuffle=True,
                                                        num_workers=2,
                                                        generator=torch.Generator()),
        }
        speed = {k: n / epoch_seconds(f(), repeats) for k, f in loaders.items()}
        waits = {k: _wait_share(loaders[k]()) for k in ("resident", "dataloader_0_workers")}
    base = speed["dataloader_0_workers"]
    for k, v in speed.items():
        row = {"benchmark": "data_path", "path": k, "images": n, "images_per_s": v,
               "vs_0_workers": v / base, "same_eval_pixels": same,
               "threads": torch.get_num_threads()}
        if k in waits:
            row["train_wait_share"], row["train_images_per_s"] = waits[k]
        rows.append(row)
        print(f"{k:>22}: {v:9.0f} images/s ({v / base:5.1f}x the 0-worker DataLoader)"
              + (f"; training small_cnn: {100 * waits[k][0]:.0f}% of the epoch waiting for "
                 f"data, {waits[k][1]:.0f} images/s" if k in waits else ""), flush=True)
    ratio = speed["resident"] / base
    print(f"{n} CIFAR-format images, batch {BATCH}, crop(pad 4) + flip + normalise, "
          f"{torch.get_num_threads()} torch thread(s): resident {ratio:.1f}x the 0-worker "
          f"path (target >= 10x: {'met' if ratio >= 10 else 'MISSED'}); evaluation pixels "
          f"identical: {same}", flush=True)
    return rows


if __name__ == "__main__":
    main()
