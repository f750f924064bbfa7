"""Linear probes: the torch backend vs scikit-learn's LogisticRegression on the same features.

    python -m benchmarks probes [--quick] [--threads N] [--n N] [--features P ...]

Per-layer probe features of the probes stage's size: 5,000 training and 1,000 test images,
10 classes, 1,024 / 4,096 / 8,192 features (64 / 256 / 512 channels pooled to 4x4; ``--quick``:
300 and 100 images, 64 and 256 features). Synthetic features with class structure: a
32-dimensional latent (class centre + unit noise) through a fixed random ReLU map to the
features, plus unit noise per feature (float32, as the stage caches them). Both sides run
:func:`landscape.probes.probe_accuracy` (the stage's code: the same standardisation, C=1,
max_iter=1000, stopping at gradient max-norm 1e-4), ``backend="torch"`` (float32, CPU) and
``backend="sklearn"`` (lbfgs, float64), one after the other on each size (warm-up first);
``--threads N`` limits torch's threads and, through threadpoolctl, scikit-learn's BLAS alike.

Reported per size: held-out accuracy of each side and their difference (points), seconds
and peak extra resident memory of each side, and the time ratio sklearn / torch.
Targets (issue 26): accuracy within 0.5 points, torch >= 10x faster.
"""

from __future__ import annotations

import contextlib

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import interleaved, make_parser, parse
from landscape.probes import probe_accuracy

CLASSES, LATENT = 10, 32
TARGET_SPEEDUP, TARGET_POINTS = 10.0, 0.5


def class_features(n_train: int, n_test: int, p: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train y, test x, test y): see the module docstring."""
    rng = np.random.default_rng(seed)
    centres = 0.3 * rng.standard_normal((CLASSES, LATENT))
    mix = rng.standard_normal((LATENT, p)) / np.sqrt(LATENT)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % CLASSES
        z = centres[y] + rng.standard_normal((n, LATENT))
        return (np.maximum(z @ mix, 0.0) + rng.standard_normal((n, p))).astype(np.float32), y

    return (*draw(n_train), *draw(n_test))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "300 / 100 images, 64 and 256 features")
    parser.add_argument("--n", type=int, default=None, help="training images (default 5000)")
    parser.add_argument("--features", type=int, nargs="+", default=None,
                        help="feature counts (default 1024 4096 8192)")
    args = parse(parser, argv)
    n_train, n_test, sizes = (300, 100, [64, 256]) if args.quick else (5000, 1000,
                                                                        [1024, 4096, 8192])
    n_train = args.n or n_train
    sizes = args.features or sizes
    with (threadpool_limits(args.threads) if args.threads else contextlib.nullcontext()):
        return _run(n_train, n_test, sizes)


def _run(n_train: int, n_test: int, sizes: list[int]) -> list[dict]:
    warm = class_features(60, 20, 16)
    for backend in ("torch", "sklearn"):  # one-off costs: imports, thread pools
        probe_accuracy(*warm, backend=backend)
    rows = []
    for p in sizes:
        xtr, ytr, xte, yte = class_features(n_train, n_test, p, seed=p)
        sides = {b: (lambda b=b: probe_accuracy(xtr, ytr, xte, yte, layer=f"p{p}", backend=b))
                 for b in ("torch", "sklearn")}
        out, seconds, peak = interleaved(sides, repeats=1)
        points = 100 * (out["torch"].accuracy - out["sklearn"].accuracy)
        ratio = seconds["sklearn"] / seconds["torch"]
        row = {"benchmark": "probes", "n_train": n_train, "n_test": n_test, "features": p,
               "classes": CLASSES, "torch_acc": out["torch"].accuracy,
               "sklearn_acc": out["sklearn"].accuracy, "acc_diff_points": points,
               "torch_train_acc": out["torch"].train_accuracy,
               "sklearn_train_acc": out["sklearn"].train_accuracy,
               "torch_converged": out["torch"].converged,
               "sklearn_converged": out["sklearn"].converged,
               "torch_seconds": seconds["torch"], "sklearn_seconds": seconds["sklearn"],
               "speedup": ratio, "torch_peak_mb": peak["torch"],
               "sklearn_peak_mb": peak["sklearn"],
               "target_met": abs(points) <= TARGET_POINTS and ratio >= TARGET_SPEEDUP}
        print(f"{n_train} x {p} features, {CLASSES} classes: accuracy torch "
              f"{out['torch'].accuracy:.4f}, sklearn {out['sklearn'].accuracy:.4f} "
              f"(diff {points:+.2f} points; train {out['torch'].train_accuracy:.4f} vs "
              f"{out['sklearn'].train_accuracy:.4f}); time torch {seconds['torch']:.2f} s, "
              f"sklearn {seconds['sklearn']:.2f} s, ratio {ratio:.1f}x; peak extra RSS torch "
              f"{peak['torch']:.0f} MB, sklearn {peak['sklearn']:.0f} MB; targets (<= "
              f"{TARGET_POINTS:g} points, >= {TARGET_SPEEDUP:g}x): "
              f"{'met' if row['target_met'] else 'MISSED'}", flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
