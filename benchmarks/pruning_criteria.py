"""Cost of each built-in pruning criterion, side by side, on the paper's two architectures.

    python -m benchmarks pruning_criteria [--quick] [--threads N] [--width W] [--batch B]
    python -m benchmarks pruning_criteria -- --zoo [--threads N]

For resnet18 and vgg19 (CIFAR-10 stems, 10 classes, width ``--width``, default 1/4) at 32 px,
one training batch of ``--batch`` (default 128) random images: the seconds of one
``compute_scores`` call of every built-in criterion at its default options (median of 3,
interleaved; obd and synflow, the costly ones, once), their ratio to magnitude_gradient's (one
backward pass over the batch: the unit of the others' cost), the peak extra resident memory,
and what each call does (backward passes, Hessian-vector products). ``--quick``:
width 1/16, 16 px, batch 16, synflow 5 iterations (seconds; the test suite runs it).

``--zoo``: whether obd, grasp and synflow (3 iterations) give finite scores on every model of
``benchmarks.stage_zoo.ZOO`` (timm / torchvision, as the pipeline builds them at 32 px, one
input channel, 10 classes, initial weights) for a batch of 8 random images; per model the
seconds, or the error in one line, and the share of weights scored exactly 0.
"""

from __future__ import annotations

import torch

from benchmarks.common import interleaved, make_parser, parse, timed
from landscape.models import create_model
from landscape.pruning import compute_scores, list_criteria, prunable_parameters

WORK = {"magnitude": "|w|", "random": "one draw", "magnitude_gradient": "1 backward",
        "obd": "10 classes x per-example backward (vmap)", "grasp": "1 backward + 1 HVP",
        "synflow": "{it} forward+backward of one image, float64"}


def zoo(models: tuple[str, ...]) -> list[dict]:
    """The ``--zoo`` rows (module docstring)."""
    from landscape.models import build_model, resolve_pool

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))]
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = build_model(name, resolve_pool(0), num_classes=10, in_channels=1,
                            input_size=32, image_size=32)
        params = prunable_parameters(model)
        for c, options in (("obd", {}), ("grasp", {}), ("synflow", {"iterations": 3})):
            row = {"benchmark": "pruning_criteria_zoo", "model": name, "criterion": c}
            try:
                scores, seconds, _ = timed(lambda: compute_scores(
                    c, params, model=model, data=data, rate=0.5, **options))
                finite = all(bool(torch.isfinite(v).all()) for v in scores.values())
                zero = (sum(int((v == 0).sum()) for v in scores.values())
                        / sum(v.numel() for v in scores.values()))
                row.update(ok=finite, seconds=seconds, zero_share=zero)
                said = f"{seconds:.1f} s, {zero:.0%} scored 0" + ("" if finite else ", NOT FINITE")
            except Exception as e:  # noqa: BLE001 (a refusal is a result here)
                row.update(ok=False, error=f"{type(e).__name__}: {e}".splitlines()[0])
                said = row["error"]
            rows.append(row)
            print(f"{name:>34} {c:>8}: {said}", flush=True)
    for c in ("obd", "grasp", "synflow"):
        mine = [r for r in rows if r["criterion"] == c]
        print(f"{c}: finite scores on {sum(r['ok'] for r in mine)} of {len(mine)} models")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "width 1/16, 16 px, batch 16")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--zoo", action="store_true", help="the stage_zoo models (docstring)")
    args = parse(parser, argv)
    if args.zoo:
        from benchmarks.stage_zoo import QUICK, ZOO
        return zoo(QUICK if args.quick else ZOO)
    width, size, batch = (1 / 16, 16, 16) if args.quick else (args.width, 32, args.batch)
    iterations = 5 if args.quick else 100
    builtin = [c for c in ("magnitude", "random", "magnitude_gradient", "obd", "grasp",
                           "synflow") if c in list_criteria()]
    rows = []
    for arch in ("resnet18", "vgg19"):
        torch.manual_seed(0)
        model = create_model(arch, num_classes=10, width=width)
        g = torch.Generator().manual_seed(1)
        data = [(torch.randn(batch, 3, size, size, generator=g),
                 torch.randint(0, 10, (batch,), generator=g))]
        params = prunable_parameters(model)
        n = sum(p.numel() for p in params.values())

        def call(name: str):
            options = {"iterations": iterations} if name == "synflow" else {}
            return lambda: compute_scores(name, params, model=model, data=data, rate=0.9,
                                          **options)
        cheap = [c for c in builtin if c not in ("obd", "synflow")]
        _, seconds, peaks = interleaved({c: call(c) for c in cheap}, repeats=3)
        _, costly, costly_peaks = interleaved(
            {c: call(c) for c in builtin if c not in cheap}, repeats=1)
        seconds, peaks = {**seconds, **costly}, {**peaks, **costly_peaks}
        for c in builtin:
            row = {"benchmark": "pruning_criteria", "arch": arch, "width": width,
                   "image_size": size, "batch": batch, "weights": n, "criterion": c,
                   "seconds": seconds[c],
                   "vs_one_backward": seconds[c] / seconds["magnitude_gradient"],
                   "peak_extra_mb": peaks[c], "work": WORK[c].format(it=iterations)}
            rows.append(row)
            print(f"{arch} ({n:,} weights, batch {batch} at {size} px) {c:>18}: "
                  f"{seconds[c]:7.3f} s ({row['vs_one_backward']:6.2f}x one backward), peak "
                  f"+{peaks[c]:.0f} MB; {row['work']}", flush=True)
    return rows


if __name__ == "__main__":
    main()
