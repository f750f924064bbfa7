"""Demo grid wall time, and how one run's cost scales with width and pool level.

    python -m benchmarks.demo_scaling [--quick] [--skip-demo] [--skip-scaling] [--threads N]
                                      [--batch 32] [--steps 2]

1. Demo grid: ``landscape-run experiment=demo`` (what ``make demo`` runs) into a temporary
   results root, timed end to end (target on 2 cores: <= 10 min), then the seconds of each stage
   of one run (mean over seeds) by architecture and pool level, read from the runs' DONE records.
2. Scaling of the paper models (vgg19, resnet50) with width (1/8 .. 1) and pool level (0 .. 4):
   FLOPs of one training step per image (forward + backward, counted by
   ``torch.utils.flop_counter``) at 32x32 (CIFAR-10) and 64x64 (Tiny ImageNet), the measured
   seconds of a training step (SGD, batch ``--batch``, CPU) at 32x32, and the FLOPs of one paper
   run (200 epochs: training steps plus a test evaluation per epoch). Divide the latter by a
   GPU's sustained FLOP/s to predict its hours; the measured/FLOP ratio column shows how far
   FLOPs predict time on this machine (small layers run below peak).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import make_parser, parse
from landscape import results
from landscape.models import create_model
from landscape.results import CELL_DIR
from landscape.stages import stage_names

WIDTHS = (0.125, 0.25, 0.5, 1.0)
LEVELS = (0, 1, 2, 3, 4)
# (image size, classes, train images, test images) of the paper's datasets.
DATASETS = {"cifar10": (32, 10, 50_000, 10_000), "tiny_imagenet": (64, 200, 100_000, 10_000)}
PAPER_EPOCHS = 200  # configs/train/paper.yaml


def _cli(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def demo_grid(root: Path, overrides: list[str]) -> tuple[float, list[dict]]:
    """Run the demo grid into ``root``; its wall seconds and stage rows (see stage_seconds)."""
    cmd = [_cli("landscape-run"), "experiment=demo", f"results_root={root}", "progress=false",
           *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the demo grid failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, stage_seconds(root)


def _stage_of(unit: str) -> str:
    """The registered stage a unit belongs to (units are ``<stage>`` or ``<stage>_<suffix>``)."""
    names = stage_names()
    return max((n for n in names if unit == n or unit.startswith(n + "_")), key=len, default=unit)


def stage_seconds(root: Path) -> list[dict]:
    """Seconds per stage of one run (units of a stage summed, then the mean over seeds) and of
    each cell-level stage, per (arch, pool level), from the DONE records under ``root``."""
    per_run: dict[tuple[str, int, str, str], float] = defaultdict(float)
    cells = {}
    for config in sorted(root.glob("*/seed=*/config.json")):
        cfg = json.loads(config.read_text())
        key = (cfg["model"]["name"], cfg["model"]["pool_level"])
        cells[config.parent.parent] = key
        for done in config.parent.glob("stages/*/DONE"):
            info = results.read_done(config.parent, done.parent.name) or {}
            stage = _stage_of(done.parent.name)
            per_run[(*key, config.parent.name, stage)] += info.get("seconds", 0.0)
    for cell, key in cells.items():
        for done in (cell / CELL_DIR).glob("stages/*/DONE"):
            info = results.read_done(cell / CELL_DIR, done.parent.name) or {}
            if "seconds" in info:
                per_run[(*key, "cell", _stage_of(done.parent.name))] += info["seconds"]
    grouped: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for (arch, level, _run, stage), sec in per_run.items():
        grouped[(arch, level, stage)].append(sec)
    return [{"benchmark": "demo_scaling", "part": "demo_stage", "arch": arch, "pool_level": level,
             "stage": stage, "runs": len(v), "mean_seconds": statistics.mean(v)}
            for (arch, level, stage), v in sorted(grouped.items())]


def step_flops(model: nn.Module, size: int, classes: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one training example (counted in eval mode: a
    batch of one cannot pass BatchNorm in train mode at a 1x1 map; the FLOPs are the same)."""
    model.eval()
    x = torch.randn(1, 3, size, size)
    y = torch.randint(classes, (1,))
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as step:
        nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return fwd.get_total_flops(), step.get_total_flops()


def step_seconds(model: nn.Module, size: int, classes: int, batch: int, steps: int) -> float:
    """Median seconds of an SGD training step (forward, backward, update) after one warm-up."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(classes, (batch,), generator=gen)
    model.train()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scaling(archs: tuple[str, ...], widths: tuple[float, ...], levels: tuple[int, ...],
            batch: int, steps: int, timed_dataset: str = "cifar10") -> list[dict]:
    rows = []
    for arch in archs:
        for width in widths:
            for level in levels:
                row = {"benchmark": "demo_scaling", "part": "scaling", "arch": arch,
                       "width": width, "pool_level": level}
                for dataset, (size, classes, n_train, n_test) in DATASETS.items():
                    torch.manual_seed(0)
                    model = create_model(arch, num_classes=classes, width=width, pool_level=level,
                                         input_size=size)  # checked now, not in the count
                    fwd, step = step_flops(model, size, classes)
                    run = PAPER_EPOCHS * (step * n_train + fwd * n_test)
                    row[f"{dataset}_step_gflops_per_image"] = step / 1e9
                    row[f"{dataset}_paper_run_pflops"] = run / 1e15
                    if dataset == timed_dataset:
                        row["params"] = sum(p.numel() for p in model.parameters())
                        t = step_seconds(model, size, classes, batch, steps)
                        row[f"{dataset}_step_seconds"] = t
                        row[f"{dataset}_measured_gflops_per_s"] = step * batch / t / 1e9
                rows.append(row)
                print(f"{arch} w{width:g} pool {level}: {row['params']:,} params; "
                      f"{row['cifar10_step_gflops_per_image']:.3f} GFLOP/image-step at 32x32, "
                      f"{row['tiny_imagenet_step_gflops_per_image']:.3f} at 64x64; batch-{batch} "
                      f"step {row[f'{timed_dataset}_step_seconds']:.3f} s "
                      f"({row[f'{timed_dataset}_measured_gflops_per_s']:.0f} GFLOP/s); paper run "
                      f"{row['cifar10_paper_run_pflops']:.3g} / "
                      f"{row['tiny_imagenet_paper_run_pflops']:.3g} PFLOP", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "a one-run, one-epoch demo and one scaling row")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    args = parse(parser, argv)
    rows = []
    if not args.skip_demo:
        overrides = (["model.name=resnet18", "model.pool_level=1", "seed=0",
                      "train.epochs=1", "data.train_subset=64", "prune.rates=[0.5]",
                      "hessian.k=2", "hessian.n_samples=16", "importance.n_samples=2",
                      "cka.n_inputs=16", "imp.enabled=true", "imp.rounds=1",
                      "hessian.trace_samples=2", "hessian.density_iter=5",
                      "prune.path_points=3", "prune.geometry_samples=16", "slice.points_1d=5",
                      "slice.points_2d=3", "sharpness.steps=1", "probes.pool_size=1",
                      "connectivity.points=3", "resolution.sizes=[16]", "report=false"]
                     if args.quick else [])  # quick: IMP too (the demo leaves it out), no report
        with tempfile.TemporaryDirectory() as tmp:
            wall, stage_rows = demo_grid(Path(tmp) / "results", overrides)
        rows.append({"benchmark": "demo_scaling", "part": "demo_grid", "wall_seconds": wall,
                     "threads": os.environ.get("OMP_NUM_THREADS", "all"),
                     "target_met": wall <= 600})
        rows += stage_rows
        print(f"demo grid: {wall:.0f} s wall (target <= 600 s: "
              f"{'met' if wall <= 600 else 'MISSED'})", flush=True)
        for r in stage_rows:
            print(f"  {r['arch']} pool {r['pool_level']} {r['stage']}: {r['mean_seconds']:.1f} s "
                  f"(mean of {r['runs']})", flush=True)
    if not args.skip_scaling:
        if args.quick:
            rows += scaling(("resnet18",), (0.0625,), (2,), batch=4, steps=1)
        else:
            rows += scaling(("vgg19", "resnet50"), WIDTHS, LEVELS, args.batch, args.steps)
    return rows


if __name__ == "__main__":
    main()
