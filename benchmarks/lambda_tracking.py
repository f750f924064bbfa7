"""lambda_max tracked during training: Lanczos warm-started from the previous epoch's top
eigenvector vs a random start, at the same tolerance.

    python -m benchmarks lambda_tracking [--quick] [--threads N] [--epochs E] [--n N]

resnet18 at width 1/8 on digits (16 px), SGD lr 0.05 momentum 0.9, batch 64, ``--epochs``
(default 10; ``--quick``: small_cnn, 3 epochs, 128 training images); after every epoch
lambda_max of the training loss on the first ``--n`` (default 256) training images without
augmentation, BN in eval mode, Ritz residual <= 1e-3 x |lambda_max|, measured twice on the same
weights: warm (:class:`landscape.hessian.tracking.LambdaTracker`) and cold (a random start
every epoch). Reported per epoch: lambda_max of both, their relative difference, HVPs of each;
and overall: total cold HVPs / total warm HVPs from epoch 2 on (epoch 1 has nothing to start
from: both are cold), and the warm tracker's seconds as a share of the epoch's training
seconds.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from benchmarks.common import make_parser, parse
from landscape.data import DataConfig, load_dataset
from landscape.hessian.tracking import LambdaTracker
from landscape.models import create_model

TOL = 1e-3


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "small_cnn, 3 epochs, 128 images (seconds)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--n", type=int, default=None, help="images lambda_max is measured on")
    args = parse(parser, argv)
    quick = args.quick
    epochs = args.epochs or (3 if quick else 10)
    n = args.n or (32 if quick else 256)
    data = load_dataset(DataConfig(name="digits", image_size=16, augment=False,
                                   train_subset=128 if quick else None))
    torch.manual_seed(0)
    model = create_model("small_cnn" if quick else "resnet18", num_classes=10, in_channels=1,
                         width=0.5 if quick else 0.125)
    loader = torch.utils.data.DataLoader(data.train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    fixed = torch.utils.data.DataLoader(torch.utils.data.Subset(data.train_eval,
                                                                range(min(n, len(data.train_eval)))),
                                        batch_size=128)
    batches = [(x, y) for x, y in fixed]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    warm, cold = LambdaTracker(batches, tol=TOL), LambdaTracker(batches, tol=TOL, warm=False)
    rows = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        w = warm.update(model)
        warm_s = time.perf_counter() - t0
        c = cold.update(model)
        rows.append({"epoch": epoch, "lambda_warm": w.value, "lambda_cold": c.value,
                     "rel_diff": abs(w.value - c.value) / abs(c.value), "hvp_warm": w.num_hvp,
                     "hvp_cold": c.num_hvp, "warm_started": w.warm,
                     "converged": w.converged and c.converged, "train_seconds": train_s,
                     "tracker_seconds": warm_s, "tracker_share": warm_s / train_s})
        print(f"epoch {epoch}: lambda_max warm {w.value:.5g} cold {c.value:.5g} "
              f"(rel diff {rows[-1]['rel_diff']:.1e}); HVPs warm {w.num_hvp} cold "
              f"{c.num_hvp}; tracker {warm_s:.2f} s = {100 * warm_s / train_s:.0f}% of the "
              f"epoch's {train_s:.2f} s", flush=True)
    later = [r for r in rows if r["warm_started"]]
    if later:
        ratio = sum(r["hvp_cold"] for r in later) / sum(r["hvp_warm"] for r in later)
        share = sum(r["tracker_seconds"] for r in rows) / sum(r["train_seconds"] for r in rows)
        summary = {"summary": True, "hvp_ratio_cold_over_warm": ratio,
                   "max_rel_diff": max(r["rel_diff"] for r in rows),
                   "tracker_share_of_training": share, "epochs": epochs, "n": n, "tol": TOL}
        print(f"cold / warm HVPs from epoch 2 on: {ratio:.2f}x (target >= 3x); largest "
              f"relative difference {summary['max_rel_diff']:.1e} (tol {TOL:g}); the warm "
              f"tracker costs {100 * share:.0f}% of the training time", flush=True)
        rows.append(summary)
    return rows


if __name__ == "__main__":
    main()
