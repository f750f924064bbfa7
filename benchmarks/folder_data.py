"""An image folder on both data paths: images/s of Imagenette-sized JPEGs decoded, brought
to size and augmented per image by the DataLoader (0 and 2 worker processes), against the
resident path (decoded once, batches augmented whole).

    python -m benchmarks folder_data [--quick] [--threads 1] [--images 640] [--size 160]

A generated tree in Imagenette's layout (``imagenette2-160/train/<wnid>/*.JPEG``, 10
classes, ``--images`` training images of 213 x 160 random pixels, JPEG quality 90) read by the
built-in ``imagenette`` loader (:func:`landscape.data.register_image_folder`): shorter side to
``--size``, centre crop, RandomResizedCrop + flip, normalisation; batch 128, one epoch per
side, best of 3. The resident side (on the CPU here) first decodes every image once (timed
apart: what a run pays at its start); before timing, both paths' evaluation batches must be
identical. ``--quick``: 40 images at 32 px.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import epoch_seconds, make_parser, parse
from landscape.data import DataConfig, load_dataset
from landscape.data.resident import resident_bundle
from landscape.device import device_settings
from landscape.train import make_loader

BATCH = 128


def write_tree(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 10)):
        for i in range(count):
            d = root / "imagenette2-160" / split / f"n{i % 10:08d}"
            d.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (160, 213, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(d / f"{i}.JPEG", quality=90)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "40 images at 32 px (seconds)", threads=1)
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--size", type=int, default=160)
    args = parse(parser, argv)
    n, size = (40, 32) if args.quick else (args.images, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_tree(Path(tmp), n)
        cfg = DataConfig(name="imagenette", root=tmp, image_size=size,
                         crop="random_resized_crop", loader="dataloader")
        bundle = load_dataset(cfg)
        cpu = device_settings(torch.device("cpu"))
        t0 = time.perf_counter()
        held = resident_bundle(cfg, bundle, cpu)
        decode = time.perf_counter() - t0
        same = all(torch.equal(a, b) for (a, _), (b, _) in zip(
            make_loader(bundle.test, BATCH, cpu, shuffle=False),
            make_loader(held.test, BATCH, cpu, shuffle=False)))
        if not same:
            raise AssertionError("resident evaluation batches differ from the DataLoader's")
        sides = {"dataloader, 0 workers": lambda: torch.utils.data.DataLoader(
                     bundle.train, batch_size=BATCH, shuffle=True, num_workers=0),
                 "dataloader, 2 workers": lambda: torch.utils.data.DataLoader(
                     bundle.train, batch_size=BATCH, shuffle=True, num_workers=2),
                 "resident": lambda: make_loader(held.train, BATCH, cpu, shuffle=True,
                                                 generator=torch.Generator().manual_seed(0))}
        seen = len(bundle.train)
        for side, loader in sides.items():
            shape = tuple(next(iter(loader()))[0].shape[1:])
            best = epoch_seconds(loader(), 3)
            rows.append({"benchmark": "folder_data", "side": side, "images": seen,
                         "size": size, "images_per_s": seen / best, "shape": list(shape),
                         "decode_seconds": decode if side == "resident" else None})
            print(f"{seen} images of 213 x 160 to {size} px, {side}: {seen / best:,.0f} "
                  f"images/s (best of 3)" + (f"; decoded once in {decode:.2f} s"
                                             if side == "resident" else ""), flush=True)
    return rows
