"""An image folder through the DataLoader: images/s of Imagenette-sized JPEGs decoded,
brought to size and augmented per image, with 0 and 2 worker processes.

    python -m benchmarks folder_data [--quick] [--threads 1] [--images 640] [--size 160]

A generated tree in Imagenette's layout (``imagenette2-160/train/<wnid>/*.JPEG``, 10
classes, ``--images`` training images of 213 x 160 random pixels, JPEG quality 90) read by the
built-in ``imagenette`` loader (:func:`landscape.data.register_image_folder`): shorter side to
``--size``, centre crop, RandomResizedCrop + flip, normalisation; batch 128, one epoch per
side, best of 3. The folder datasets have no resident path, so this is what feeds a GPU: the
figure per worker says how many workers an epoch needs. ``--quick``: 40 images at 32 px.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import make_parser, parse
from landscape.data import DataConfig, load_dataset

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
        bundle = load_dataset(DataConfig(name="imagenette", root=tmp, image_size=size,
                                         crop="random_resized_crop", loader="dataloader"))
        for workers in (0, 2):
            loader = torch.utils.data.DataLoader(bundle.train, batch_size=BATCH, shuffle=True,
                                                 num_workers=workers)
            best, shape = float("inf"), None
            for _ in range(3):
                t0 = time.perf_counter()
                seen = 0
                for x, y in loader:
                    seen += len(y)
                    shape = tuple(x.shape[1:])
                best = min(best, time.perf_counter() - t0)
            rows.append({"benchmark": "folder_data", "images": seen, "size": size,
                         "num_workers": workers, "images_per_s": seen / best,
                         "shape": list(shape)})
            print(f"{seen} images of 213 x 160 to {size} px, {workers} workers: "
                  f"{seen / best:,.0f} images/s (best of 3)", flush=True)
    return rows
