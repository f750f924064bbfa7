"""A 2D loss slice: ours (weights moved in place, restored exactly) vs PyPI loss-landscapes 3.0.6
and the straightforward copy-per-point loop.

    python -m benchmarks loss_slice [--quick] [--threads N]

vgg19 at width 1/8 on 256 digits images at 32x32 (``--quick``: small_cnn, 64 images, 5x5), eval
mode, float32, the plane of two filter-normalised random directions, 21x21 points. All three
sides evaluate the mean cross-entropy of the same images in one batch per point.

* values: ours vs the copy-per-point loop at the same points (max |difference|; target
  <= 1e-5), and vs loss-landscapes' ``planar_interpolation`` at the points its zig-zag visits
  (it moves the start point by += / -= one step per point, so its grid is offset by a step on
  every other column, and it accumulates rounding);
* time: median of 3 runs of each side, interleaved (the first run of each gives the values);
  peak extra resident memory of each side (``/proc/self/clear_refs``; NaN where unsupported).

Target (issue 16): ours >= 3x faster than loss-landscapes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks.common import interleaved, make_parser, parse
from landscape.data import DataConfig, load_dataset
from landscape.geometry import evaluate_batches, loss_slice, random_direction
from landscape.models import create_model

TARGET = 3.0


def _copy_loop(model, batches, d1, d2, a_axis, b_axis) -> np.ndarray:
    out = np.empty((len(a_axis), len(b_axis)))
    for i, a in enumerate(a_axis):
        for j, b in enumerate(b_axis):
            m = copy.deepcopy(model)
            with torch.no_grad():
                for name, p in m.named_parameters():
                    if name in d1:
                        p.add_(d1[name], alpha=float(a)).add_(d2[name], alpha=float(b))
            out[i, j] = evaluate_batches(m, batches)[0]
    return out


def _loss_landscapes(model, x, y, d1, d2, span, steps) -> np.ndarray:
    """loss-landscapes' planar_interpolation from the corner w0 - span (d1 + d2) to the ends
    corner + 2 span d1 and corner + 2 span d2."""
    from loss_landscapes import planar_interpolation
    from loss_landscapes.metrics import Loss

    def shifted(c1: float, c2: float):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name in d1:
                    p.add_(d1[name], alpha=c1).add_(d2[name], alpha=c2)
        return m.eval()

    corner = shifted(-span, -span)
    return planar_interpolation(corner, shifted(span, -span), shifted(-span, span),
                                Loss(F.cross_entropy, x, y), steps=steps, deepcopy_model=True)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(make_parser(__doc__, "small_cnn, 64 images, 5x5"), argv)
    arch, width, n, steps = (("small_cnn", 0.5, 64, 5) if args.quick
                             else ("vgg19", 0.125, 256, 21))
    data = load_dataset(DataConfig(name="digits", image_size=32, augment=False))
    x = torch.stack([data.train_eval[i][0] for i in range(n)])
    y = torch.tensor([data.train_eval[i][1] for i in range(n)])
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1, width=width).eval()
    batches = [(x, y)]
    d1, d2 = random_direction(model, seed=1), random_direction(model, seed=2)
    span = 1.0
    axis = np.linspace(-span, span, steps)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sides = {"ours": lambda: loss_slice(model, batches, [d1, d2], [axis, axis]).loss,
             "copy_loop": lambda: _copy_loop(model, batches, d1, d2, axis, axis),
             "loss_landscapes": lambda: np.asarray(
                 _loss_landscapes(model, x, y, d1, d2, span, steps))}
    values, med, peaks = interleaved(sides, 1 if args.quick else 3)
    exact = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ours, loop, theirs = values["ours"], values["copy_loop"], values["loss_landscapes"]
    # loss-landscapes' grid: column i at -span + i h; even columns rows 1..steps, odd 0..steps-1
    h = 2 * span / steps
    a_ll = -span + h * np.arange(steps)
    b_ll = -span + h * np.arange(steps + 1)
    ours_ll = loss_slice(model, batches, [d1, d2], [a_ll, b_ll]).loss
    expected = np.stack([ours_ll[i, 1:] if i % 2 == 0 else ours_ll[i, :-1]
                         for i in range(steps)])
    rows = []
    row = {"benchmark": "loss_slice", "arch": arch, "width": width, "images": n,
           "points": steps * steps, "weights_restored_exactly": exact,
           "max_abs_diff_vs_copy_loop": float(np.abs(ours - loop).max()),
           "max_abs_diff_vs_loss_landscapes": float(np.abs(expected - theirs).max()),
           **{f"{k}_seconds": v for k, v in med.items()},
           **{f"{k}_peak_mb": v for k, v in peaks.items()},
           "speedup_vs_loss_landscapes": med["loss_landscapes"] / med["ours"],
           "speedup_vs_copy_loop": med["copy_loop"] / med["ours"]}
    row["target_met"] = (row["max_abs_diff_vs_copy_loop"] <= 1e-5 and exact
                         and row["speedup_vs_loss_landscapes"] >= TARGET)
    print(f"{arch} width {width}, {n} images, {steps}x{steps} plane: ours {med['ours']:.2f} s, "
          f"copy loop {med['copy_loop']:.2f} s, loss-landscapes {med['loss_landscapes']:.2f} s "
          f"-> {row['speedup_vs_loss_landscapes']:.1f}x / {row['speedup_vs_copy_loop']:.1f}x; "
          f"max |ours - copy loop| {row['max_abs_diff_vs_copy_loop']:.1e}, max |ours - "
          f"loss-landscapes| {row['max_abs_diff_vs_loss_landscapes']:.1e} (its own grid); "
          f"weights restored exactly: {exact}; peak extra RSS MB "
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
          + f"; target >= {TARGET:g}x: {'met' if row['target_met'] else 'MISSED'}", flush=True)
    rows.append(row)
    return rows


if __name__ == "__main__":
    main()
