"""Projected-gradient maps: one batched backward vs a per-sample loop.

    python -m benchmarks.importance_batched [--quick] [--threads N]

vgg19 at width 1/8, 50 random 64x64 inputs (``--quick``: small_cnn, 8 inputs of 32x32), eval
mode. Both sides compute the same maps (checked to 1e-10 in float64 before any ratio is
reported); the loop is a fair one: the target layer is resolved once, then one
``projected_gradient`` call per input. Timed (median of 3, the two sides interleaved) in
float32, what the importance stage runs, and in float64.
Target (issue 9): batched >= 3x faster.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import make_parser, parse
from landscape.importance import last_conv, projected_gradient
from landscape.models import create_model

TARGET = 3.0


def batched_and_loop(model, x: torch.Tensor, layer: str):
    return (projected_gradient(model, x, layer=layer),
            torch.cat([projected_gradient(model, x[i:i + 1], layer=layer)
                       for i in range(len(x))]))


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(make_parser(__doc__, "small_cnn, 8 inputs of 32x32"), argv)
    torch.manual_seed(0)
    arch, width, n, size = ("small_cnn", 0.25, 8, 32) if args.quick else ("vgg19", 0.125, 50, 64)
    model = create_model(arch, num_classes=10, width=width).eval()
    x = torch.randn(n, 3, size, size, dtype=torch.float64)
    layer = last_conv(model, x[:1].float())
    batched, looped = batched_and_loop(model.double(), x, layer)
    same = bool(torch.allclose(batched, looped, rtol=1e-10, atol=1e-14))
    rows = []
    for dtype in (torch.float32, torch.float64):
        model, xd = model.to(dtype), x.to(dtype)
        projected_gradient(model, xd[:2], layer=layer)  # warm-up (input-size check, allocator)
        t_batched, t_loop = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            projected_gradient(model, xd, layer=layer)
            t_batched.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(n):
                projected_gradient(model, xd[i:i + 1], layer=layer)
            t_loop.append(time.perf_counter() - t0)
        tb, tl = statistics.median(t_batched), statistics.median(t_loop)
        name = str(dtype).removeprefix("torch.")
        row = {"benchmark": "importance_batched", "arch": arch, "n": n, "input_size": size,
               "dtype": name, "batched_seconds": tb, "loop_seconds": tl, "speedup": tl / tb,
               "same": same, "target_met": same and tl / tb >= TARGET}
        print(f"{arch} width {width}, {n} inputs of {size}x{size}, {name}: batched {tb:.3f} s, "
              f"loop {tl:.3f} s, speedup {tl / tb:.1f}x; same maps (float64): {same}; target "
              f">= {TARGET:g}x: {'met' if row['target_met'] else 'MISSED'}", flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
