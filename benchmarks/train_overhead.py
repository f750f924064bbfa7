"""Training-loop overhead: our trainer vs a minimal hand-written PyTorch loop.

    python -m benchmarks.train_overhead [--quick] [--epochs 6] [--threads N]

Same model (resnet18 at width 1/4, 1 input channel), the same in-memory digits images (32x32),
the same DataLoader with the paper's augmentation (random crop + flip), batch size, SGD
optimizer and data order. Before timing, one epoch of each from the same weights and seed must
give bit-identical weights (so both compute the same thing). Then the two run interleaved, one
minimal epoch after each of ours, so a drift in the machine's speed hits both alike. Reported:
steady-state images/s of each (epochs after the first, median), the median over epoch pairs
of their ratio (target >= 0.97) with its range, and the share of a step spent loading data
(iterating the DataLoader alone). Our epochs include per-epoch checkpointing and a test
evaluation, made negligible here with a 1-image test set.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import Subset

from benchmarks.common import make_parser, parse
from landscape.data import DataConfig, load_dataset
from landscape.device import device_settings
from landscape.models import create_model
from landscape.seeds import derive_seed, seed_everything
from landscape.train import TrainConfig, make_loader, make_optimizer, train_model


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=10, in_channels=1, width=0.25)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "256 images, 2 epochs")
    parser.add_argument("--epochs", type=int, default=6)
    args = parse(parser, argv)
    epochs = 2 if args.quick else args.epochs
    data = load_dataset(DataConfig(name="digits", image_size=32, crop_padding=4,
                                   train_subset=256 if args.quick else None))
    train, test = data.train, Subset(data.test, range(1))
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=0.05, scheduler="constant")
    settings = device_settings(torch.device("cpu"))
    seed = 0
    gen = torch.Generator()
    loader = make_loader(train, cfg.batch_size, settings, shuffle=True, generator=gen)
    criterion = nn.CrossEntropyLoss()

    def minimal_epoch(model, opt, epoch: int) -> float:
        seed_everything(derive_seed(seed, epoch))
        gen.manual_seed(derive_seed(seed, epoch))
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    # 1. same computation: one epoch each from the same weights
    ref = _model()
    minimal_epoch(ref, make_optimizer(ref, cfg), 1)
    ours = _model()
    with tempfile.TemporaryDirectory() as d:
        train_model(ours, train, test, TrainConfig(**{**vars(cfg), "epochs": 1}), seed=seed,
                    settings=settings, checkpoint_dir=d, progress=False)
    same = all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(),
                                                 ours.state_dict().values()))
    # 2. steady-state speed, the two sides interleaved epoch by epoch (after each of our
    # epochs, one minimal epoch) so that a drift in machine speed hits both alike. Ours is
    # timed from the end of the previous minimal epoch to the callback: its whole loop,
    # checkpoint and test evaluation included.
    model = _model()
    opt = make_optimizer(model, cfg)
    marks: list[float] = []
    minimal: list[float] = []

    def after_our_epoch(record) -> None:
        marks.append(time.perf_counter())
        minimal.append(minimal_epoch(model, opt, record.epoch))
        marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as d:
        train_model(_model(), train, test, cfg, seed=seed, settings=settings, checkpoint_dir=d,
                    progress=False, on_epoch=after_our_epoch)
    ours_s = [marks[i] - marks[i - 1] for i in range(2, len(marks), 2)]  # epochs 2..
    minimal = minimal[1:]
    ratios = [m / o for m, o in zip(minimal, ours_s)]
    t0 = time.perf_counter()
    for _ in loader:
        pass
    load_s = time.perf_counter() - t0
    n = len(train)
    ratio = statistics.median(ratios)
    row = {"benchmark": "train_overhead", "images": n, "epochs_timed": len(ours_s),
           "minimal_images_per_s": n / statistics.median(minimal),
           "ours_images_per_s": n / statistics.median(ours_s), "ratio": ratio,
           "ratio_min": min(ratios), "ratio_max": max(ratios),
           "data_loading_share": load_s / statistics.median(minimal),
           "same": same, "target_met": same and ratio >= 0.97}
    print(f"resnet18 width 1/4 on {n} digits 32x32, batch {cfg.batch_size}: minimal loop "
          f"{row['minimal_images_per_s']:.0f} img/s, ours {row['ours_images_per_s']:.0f} img/s, "
          f"ratio {ratio:.3f} (median of {len(ratios)} interleaved epoch pairs, range "
          f"{min(ratios):.3f}-{max(ratios):.3f}; target "
          f">= 0.97: {'met' if row['target_met'] else 'MISSED'}); identical weights after one "
          f"epoch: {same}; data loading {100 * row['data_loading_share']:.0f}% of a step",
          flush=True)
    return [row]


if __name__ == "__main__":
    main()
