"""Every run stage on torchvision / timm models at a small input size, end to end.

For each model, one ``landscape-run`` (its own process, one torch thread) of one seed on
scikit-learn's digits at ``--size`` px with every run-level stage enabled at tiny settings
(:data:`STAGES`: pruning with a fine-tune, Hessian, importance with the per-layer ERFs, loss
slices, sharpness, probes with the predicted border, the resolution stage at the trained size
(a model built for one size, LeViT or EfficientFormer-V2, cannot be evaluated at another), and
the cell's RF table). With ``--seeds 2`` or more, a multirun over the seeds with the stages
between seeds, CKA and connectivity, and IMP with a random-mask control (:data:`CELL_STAGES`).
A row per model: the
exit status, the seconds, the units done and, where the run stopped, its last line (a
refusal of the settings says ``landscape-run: error: ...``; anything else is a crash to fix).
``model_zoo`` checks one training step and one Hessian-vector product of many more models;
this one checks what the stages do with what those give. No target: it measures coverage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import make_parser, parse

# Small models of many families (the timm sample's small members and more), each trainable
# at 32 px with one input channel
ZOO = ("timm:fasternet_t0", "timm:pvt_v2_b0", "timm:mobilevitv2_050",
       "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0", "timm:convnext_atto",
       "timm:tiny_vit_5m_224", "timm:edgenext_xx_small", "timm:levit_128s",
       "timm:efficientformerv2_s0", "timm:hgnetv2_b0", "timm:regnetx_002", "timm:mobileone_s0",
       "timm:rexnet_100", "timm:mixnet_s", "timm:repvit_m0_9", "timm:xcit_nano_12_p16_224",
       "torchvision:shufflenet_v2_x0_5", "torchvision:squeezenet1_1", "timm:lcnet_050",
       "timm:resnet10t", "timm:efficientvit_b0", "timm:fastvit_t8", "timm:mambaout_femto",
       "timm:vit_tiny_patch16_224", "timm:poolformerv2_s12", "timm:inception_next_atto",
       "timm:starnet_s1", "timm:coat_lite_tiny", "timm:efficientvit_m0")
QUICK = ("timm:test_resnet",)
STAGES = (
    "train.epochs=1", "data=digits", "data.train_subset=128", "data.test_subset=64",
    "prune.enabled=true", "prune.rates=[0.5]", "prune.finetune=true", "prune.finetune_epochs=1",
    "prune.hessian_k=1", "prune.hessian_tol=0.1", "prune.path_points=3",
    "prune.geometry_samples=32", "prune.geometry_batch_size=32",
    "hessian.enabled=true", "hessian.k=2", "hessian.n_samples=32", "hessian.tol=0.01",
    "hessian.density_runs=1", "hessian.density_iter=8", "hessian.trace_samples=2",
    "hessian.save_eigenvectors=2",
    "importance.enabled=true", "importance.checkpoints=[init,final]", "importance.mode=images",
    "importance.n_samples=4", "importance.per_layer=true",
    "slice.enabled=true", "slice.directions=[random,hessian]", "slice.points_1d=5",
    "slice.points_2d=3", "slice.n_samples=32", "slice.batch_size=32",
    "sharpness.enabled=true", "sharpness.steps=2", "sharpness.n_samples=32",
    "sharpness.batch_size=32",
    "probes.enabled=true", "probes.n_train=64", "probes.n_test=64", "probes.batch_size=64",
    "probes.pool_size=2",
    "resolution.enabled=true")
# with --seeds 2 or more: the stages between seeds of a cell, and IMP with a control branch
CELL_STAGES = (
    "cka.enabled=true", "cka.n_inputs=64", "connectivity.enabled=true", "connectivity.points=3",
    "connectivity.n_samples=64", "connectivity.batch_size=64", "imp.enabled=true",
    "imp.rounds=2", "imp.rate=0.2", "imp.controls=[random_mask]")


def command(model: str, size: int, root: Path, seeds: int = 1) -> list[str]:
    """The ``landscape-run`` command line of one model (``seeds`` >= 2: a multirun over seeds
    0 .. seeds - 1 with :data:`CELL_STAGES` too)."""
    cell = (["-m", f"seed={','.join(map(str, range(seeds)))}", *CELL_STAGES] if seeds > 1
            else [])
    return [sys.executable, "-m", "landscape.cli", *cell, f"model.name={model}",
            f"data.image_size={size}", f"importance.input_size={size}",
            f"resolution.sizes=[{size}]", *STAGES, "device=cpu",
            "num_threads=1", "progress=false", "report=false", f"results_root={root}"]


def _one(model: str, size: int, root: Path, timeout: float, seeds: int = 1) -> dict:
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command(model, size, root, seeds), capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "CI": "1"})
        rc, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = None, f"timed out after {timeout:.0f} s: {e.stderr or ''}"
    lines = [line for line in str(out).splitlines() if line.strip()]
    return {"model": model, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "units": _units(root, model),
            "stopped": None if rc == 0 else (lines[-1][:300] if lines else "no output")}


def _units(root: Path, model: str) -> list[str]:
    from landscape import results

    try:
        df = results.load(root)
    except Exception:  # noqa: BLE001 - nothing written yet
        return []
    return sorted(df.loc[df["arch"] == model, "unit"].dropna().unique().tolist())


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "one tiny timm test model at 16 px")
    parser.add_argument("--models", default=None,
                        help="comma-separated source:name list (default: the ZOO list)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=1, help="models run at once")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per model")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds per model; 2 or more add CKA, connectivity and IMP")
    parser.add_argument("--root", type=Path, default=None,
                        help="results folder (default: a temporary one, removed)")
    args = parse(parser, argv)
    models = (QUICK if args.quick else
              tuple(args.models.split(",")) if args.models else ZOO)
    size = 16 if args.quick else args.size
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = []
            for row in pool.map(lambda m: _one(m, size, root, args.timeout, args.seeds),
                                models):
                rows.append(row)
                print(f"{row['model']:36s} rc {row['rc']}  {row['seconds']:7.1f} s  "
                      f"{len(row['units'])} units" + (f"  {row['stopped']}" if row["stopped"]
                                                      else ""), flush=True)
    ok = [r["model"] for r in rows if r["rc"] == 0]
    refused = [r["model"] for r in rows if r["rc"] == 2]
    crashed = [r["model"] for r in rows if r["rc"] not in (0, 2)]
    print(f"{len(ok)}/{len(rows)} ran every unit at {size} px; refused in one line: "
          f"{len(refused)}; crashed or timed out: {len(crashed)} {crashed}", flush=True)
    return rows + [{"model": "ALL", "models": len(rows), "ok": len(ok), "refused": refused,
                    "crashed": crashed, "size": size, "seeds": args.seeds}]


if __name__ == "__main__":
    main()
