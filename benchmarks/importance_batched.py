"""Projected-gradient maps: one batched backward vs a per-sample loop.

    python -m benchmarks.importance_batched [--quick] [--threads N]

vgg19 at width 1/8, 50 random 64x64 inputs (``--quick``: small_cnn, 8 inputs of 32x32), eval
mode. Both compute the same maps (checked to 1e-10 in float64 before the ratio is reported).
Target (issue 9): batched >= 3x faster.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import make_parser, parse
from landscape.importance import projected_gradient
from landscape.models import create_model


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(make_parser(__doc__, "small_cnn, 8 inputs of 32x32"), argv)
    torch.manual_seed(0)
    arch, width, n, size = ("small_cnn", 0.25, 8, 32) if args.quick else ("vgg19", 0.125, 50, 64)
    model = create_model(arch, num_classes=10, width=width).double().eval()
    x = torch.randn(n, 3, size, size, dtype=torch.float64)
    projected_gradient(model, x[:2])  # warm-up (input-size check, allocator)
    t_batched, t_loop = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        batched = projected_gradient(model, x)
        t_batched.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        looped = torch.cat([projected_gradient(model, x[i:i + 1]) for i in range(n)])
        t_loop.append(time.perf_counter() - t0)
    same = bool(torch.allclose(batched, looped, rtol=1e-10, atol=1e-14))
    tb, tl = statistics.median(t_batched), statistics.median(t_loop)
    row = {"benchmark": "importance_batched", "arch": arch, "n": n, "input_size": size,
           "batched_seconds": tb, "loop_seconds": tl, "speedup": tl / tb, "same": same,
           "target_met": same and tl / tb >= 3}
    print(f"{arch} width {width}, {n} inputs of {size}x{size}: batched {tb:.3f} s, loop "
          f"{tl:.3f} s, speedup {tl / tb:.1f}x; same maps: {same}; target >= 3x: "
          f"{'met' if row['target_met'] else 'MISSED'}", flush=True)
    return [row]


if __name__ == "__main__":
    main()
