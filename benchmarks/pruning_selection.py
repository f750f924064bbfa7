"""Global magnitude mask selection: ours vs torch.nn.utils.prune.global_unstructured.

    python -m benchmarks.pruning_selection [--quick] [--rate 0.9] [--threads N]

Both select the round(rate * N) smallest |w| over the conv and linear weights of vgg19 (width 1:
20,024,000 weights; ``--quick``: width 1/16). Reported: seconds of each (median of 3), their
ratio, and how many weights the two pruned sets disagree on (exact ties at the threshold may be
broken differently: we prune the earlier position). Target (issue 9): <= 0.5 s for ours.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from benchmarks.common import make_parser, parse
from landscape.models import create_model
from landscape.pruning import compute_scores, prunable_parameters, select_masks


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "vgg19 at width 1/16")
    parser.add_argument("--rate", type=float, default=0.9)
    args = parse(parser, argv)
    torch.manual_seed(0)
    model = create_model("vgg19", num_classes=10, width=1 / 16 if args.quick else 1.0)
    params = prunable_parameters(model)
    n = sum(p.numel() for p in params.values())
    repeats = 3

    def ours():
        return select_masks(compute_scores("magnitude", params, model=model), args.rate, "global")

    t_ours, masks = _median_seconds(ours, repeats)

    def torch_version():
        m = create_model("vgg19", num_classes=10, width=1 / 16 if args.quick else 1.0)
        m.load_state_dict(model.state_dict())
        mods = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        t0 = time.perf_counter()
        torch_prune.global_unstructured(mods, pruning_method=torch_prune.L1Unstructured,
                                        amount=args.rate)
        elapsed = time.perf_counter() - t0
        return elapsed, {name: mod.weight_mask.bool() for (mod, _), name in
                         zip(mods, [k for k in params])}

    runs = [torch_version() for _ in range(repeats)]
    t_torch = statistics.median(r[0] for r in runs)
    torch_masks = runs[-1][1]
    differ = sum(int((masks[k] != torch_masks[k]).sum()) for k in masks)
    pruned = sum(int((~m).sum()) for m in masks.values())
    row = {"benchmark": "pruning_selection", "weights": n, "rate": args.rate, "pruned": pruned,
           "ours_seconds": t_ours, "torch_seconds": t_torch, "speedup": t_torch / t_ours,
           "differing_weights": differ, "target_met": t_ours <= 0.5}
    print(f"{n:,} prunable weights, rate {args.rate}: ours {t_ours:.3f} s, torch "
          f"global_unstructured {t_torch:.3f} s ({row['speedup']:.1f}x); pruned {pruned:,}; "
          f"sets differ in {differ} weight(s) (ties at the threshold); target <= 0.5 s: "
          f"{'met' if row['target_met'] else 'MISSED'}", flush=True)
    return [row]


if __name__ == "__main__":
    main()
