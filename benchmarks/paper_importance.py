"""The paper's Tables 3 and 4 recomputed: projected-gradient maxima at initialisation.

    python -m benchmarks paper_importance [--quick] [--threads N] [--n-inits 50]

For vgg19 and resnet50 at full width and RF pool levels 1-4, ``importance_at_init`` with
``protocol="paper"`` (the released code's procedure, 64x64 input, fresh initialisations) and
``protocol="default"`` (our measurement), printed beside the paper's published mean ± std
(``analysis/reference/paper_tables.csv``), with whether ours lies within the published
mean ± 2 std. ``--quick``: width 1/8, 2 inits, levels 1 and 4 (seconds; no comparison).
"""

from __future__ import annotations

import time

from analysis.reference import paper_tables
from benchmarks.common import make_parser, parse
from landscape.importance import importance_at_init


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "width 1/8, 2 inits, levels 1 and 4")
    parser.add_argument("--n-inits", type=int, default=50)
    args = parse(parser, argv)
    width, n, levels = (0.125, 2, (1, 4)) if args.quick else (1.0, args.n_inits, (1, 2, 3, 4))
    ref = paper_tables()
    ref = ref[ref["metric"] == "importance_max"]
    rows = []
    for arch in ("vgg19", "resnet50"):
        for level in levels:
            paper = ref[(ref["arch"] == arch) & (ref["pool_level"] == level)]
            row: dict = {"benchmark": "paper_importance", "arch": arch, "pool_level": level,
                         "width": width, "n_inits": n}
            for protocol in ("paper", "default"):
                t0 = time.perf_counter()
                res = importance_at_init(arch, level, protocol=protocol, n_inits=n, width=width)
                row[f"{protocol}_mean"], row[f"{protocol}_std"] = res.max_mean, res.max_std
                row[f"{protocol}_seconds"] = time.perf_counter() - t0
            if len(paper) and not args.quick:
                mean, std = float(paper["mean"].iloc[0]), float(paper["std"].iloc[0])
                row.update(published_mean=mean, published_std=std,
                           within_2_std=abs(row["paper_mean"] - mean) <= 2 * std)
            print(f"{arch} level {level}: paper protocol {row['paper_mean']:.3g} ± "
                  f"{row['paper_std']:.2g}, default protocol {row['default_mean']:.3g} ± "
                  f"{row['default_std']:.2g}"
                  + (f"; published {row['published_mean']:.3g} ± {row['published_std']:.2g}"
                     f" (within 2 std: {row['within_2_std']})" if "published_mean" in row
                     else ""), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
