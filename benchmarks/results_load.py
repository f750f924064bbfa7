"""Loading a results root: one parse and dtype conversion for every unit vs one per unit.

    python -m benchmarks.results_load [--quick] [--runs 80] [--units 40] [--rows 50]

Writes a generated root (``--runs`` runs of ``--units`` finished stage units of ``--rows``
rows each, every column of the schema used somewhere: the paper grid is 80 runs of about 40
units) with ``landscape.results.write_stage``, then times ``landscape.results.load`` (each
unit's files verified, then the rows of all parsed and typed at once) against the same units
parsed and typed one by one, then concatenated (what ``load`` did before), interleaved,
median of 3.
Both frames must be equal, values and dtypes. ``--quick``: 4 runs of 6 units.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.common import interleaved, make_parser, parse
from landscape import results
from landscape.results import store


def write_root(root: Path, runs: int, units: int, rows: int) -> int:
    """A results root of ``runs`` x ``units`` done units; returns the number of rows."""
    n = 0
    for r in range(runs):
        run_dir = root / f"resnet50-w1-cifar10-pool{r % 4}-{r:010x}" / f"seed={r % 5}"
        ident = {"run_id": f"{run_dir.parent.name}/seed={r % 5}", "arch": "resnet50",
                 "dataset": "cifar10", "pool_level": r % 4, "pool_kernel": 3, "pool_stride": 2,
                 "pool_padding": 1, "receptive_field": 100 + r, "width": 1.0, "seed": r % 5}
        for u in range(units):
            stage = ("train", "prune", "finetune", "hessian", "cka")[u % 5]
            body = [{**ident, "stage": stage, "metric": "test_acc", "value": 0.5 + i / 1e4,
                     "index": i if u % 2 else None, "layer": f"layer{i % 7}",
                     "criterion": "magnitude" if stage in ("prune", "finetune") else None,
                     "prune_rate": 0.9 if stage in ("prune", "finetune") else None,
                     "finetuned": stage == "finetune" if stage != "train" else None,
                     "note": f"unit {u}; checkpoint=final"} for i in range(rows)]
            results.write_stage(run_dir, f"{stage}_{u}", body)
            n += rows
    return n


def per_unit(root: Path) -> pd.DataFrame:
    """``load`` as it was: each unit's rows typed on their own, then concatenated."""
    frames = []
    for out_dir, unit, _ in store._markers(root, store.DONE):
        rows, _ = store._verified_rows(store.stage_dir(out_dir, unit),
                                       store.read_done(out_dir, unit), unit)
        frames.append(rows)
    return store.align_derived(pd.concat(frames, ignore_index=True))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "4 runs of 6 units")
    parser.add_argument("--runs", type=int, default=80)
    parser.add_argument("--units", type=int, default=40)
    parser.add_argument("--rows", type=int, default=50)
    args = parse(parser, argv)
    runs, units = (4, 6) if args.quick else (args.runs, args.units)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = write_root(root, runs, units, args.rows)
        values, seconds, _ = interleaved({"one conversion": lambda: results.load(root),
                                          "per unit": lambda: per_unit(root)}, repeats=3)
    a, b = values["one conversion"], values["per unit"]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    row = {"benchmark": "results_load", "units": runs * units, "rows": n,
           "one_conversion_seconds": seconds["one conversion"],
           "per_unit_seconds": seconds["per unit"],
           "speedup": seconds["per unit"] / seconds["one conversion"], "equal": True}
    print(f"{runs * units} units, {n:,} rows: load {row['one_conversion_seconds']:.2f} s, typed "
          f"per unit {row['per_unit_seconds']:.2f} s ({row['speedup']:.1f}x); frames equal",
          flush=True)
    return [row]


if __name__ == "__main__":
    main()
