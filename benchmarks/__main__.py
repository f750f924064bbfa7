"""Run benchmarks side by side and append their results to ``benchmarks/results.jsonl``.

    python -m benchmarks all [--quick]
    python -m benchmarks pruning_selection importance_batched [--quick]
    python -m benchmarks cka -- --n 500        (after --: options of that one benchmark)
    python -m benchmarks gpu_acceptance -- --out DIR   (the GPU check, issue 23: not in 'all',
                                                      writes its own files, not this one)

Each line of the results file records the machine, torch version, threads, date, the command
and the benchmark's rows. ``--quick`` runs tiny sizes (seconds; the test suite uses it) and
records nothing unless ``--record`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

BENCHMARKS = ("train_overhead", "pruning_selection", "importance_batched", "hessian_topk", "cka",
              "demo_scaling", "paper_importance", "loss_slice", "saturation",
              "data_path", "rf_table", "probes", "lambda_tracking", "model_zoo", "layouts",
              "rf_audit", "stage_zoo", "pruning_criteria", "results_load", "hessian_journal",
              "folder_data", "gpu_acceptance")
RESULTS = Path(__file__).resolve().parent / "results.jsonl"
# not in 'all' and not appended to the results file: a check of the CUDA paths that writes its
# own outputs (--out DIR); on a machine without CUDA it runs its --quick CPU checks only
OWN_OUTPUTS = ("gpu_acceptance",)


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or None,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help=f"'all' or some of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--record", action="store_true", help="append quick results too")
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:split]), argv[split + 1:]
    names = ([n for n in BENCHMARKS if n not in OWN_OUTPUTS] if args.names == ["all"]
             else args.names)
    if extra and len(names) != 1:
        parser.error("options after -- go to one benchmark; name exactly one")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; valid: all, {', '.join(BENCHMARKS)}")
    out = {}
    for name in names:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        out[name] = module.main((["--quick"] if args.quick else []) + extra)
        if (not args.quick or args.record) and name not in OWN_OUTPUTS:
            record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                      "command": " ".join([Path(sys.executable).name, "-m", "benchmarks",
                                           *argv]),
                      "machine": machine(), "benchmark": name, "quick": args.quick,
                      "rows": out[name]}
            with open(args.out, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
    return out


if __name__ == "__main__":
    main()
