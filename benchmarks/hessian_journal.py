"""Saving a Hessian unit's progress: the paper's Lanczos run with every basis vector written
to a scratch folder (so a preempted unit goes on) against the same run without, side by side.

    python -m benchmarks hessian_journal [--quick] [--threads N] [--arch resnet50] [--steps 4]

``--arch`` (default resnet50, width 1, 10 classes, 3 x 32 x 32 inputs, random weights) with
one batch of 10 random images and BatchNorm on batch statistics (the paper protocol's batch;
its Hessian-vector product is the mean over 1,000 such batches), ``--steps`` Lanczos steps of
:func:`landscape.hessian.paper_spectrum` with a :class:`~landscape.stages.scratch.
FolderJournal` writing at once (``every=0``: the most saving can cost; the stage writes every
60 s) and without, interleaved, median of 3; both spectra must be equal. Reported: seconds
per step of each side, the extra seconds per step (one basis vector written per step: the
journal's whole cost), the vector's size, and one product over one batch of 10, so that the
cost per step of the paper protocol (1,000 batches) can be put beside it. ``--quick``:
small_cnn, 3 steps.

``--top-k K`` (default 0: not run) also times our protocol's top-K solve
(:func:`landscape.hessian.top_eigenvalues`, Lanczos with ``--ncv`` vectors, ``--tol``) with
its restarts saved to a scratch folder that writes at once (``every=0``) against the same
solve without, interleaved, median of 3; the eigenvalues must be equal. Reported: seconds of
each side, their ratio (the solve saves a restart only when it ran 20 times as long as the
last save took: target <= 1.05), the restarts saved, the seconds their writing took and the
saved restart's size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import interleaved, make_parser, parse
from landscape.hessian import HessianOperator, paper_spectrum, top_eigenvalues
from landscape.models import create_model
from landscape.stages.scratch import FolderJournal


def main(argv: list[str] | None = None) -> list[dict]:
    parser = make_parser(__doc__, "small_cnn, 3 steps (seconds)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--ncv", type=int, default=12)
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parse(parser, argv)
    arch, steps = ("small_cnn", 3) if args.quick else (args.arch, args.steps)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=3, width=1.0)
    x, y = torch.randn(10, 3, 32, 32), torch.randint(0, 10, (10,))
    op = HessianOperator(model, nn.functional.cross_entropy, [(x, y)], bn_mode="train")
    v = torch.ones(op.dim, dtype=op.dtype)
    t0 = time.perf_counter()
    op(v)
    hvp_seconds = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))

        def saved():
            work = Path(tmp) / str(next(runs))
            return paper_spectrum(op, n_iter=steps, journal=FolderJournal(work, every=0))

        values, seconds, _ = interleaved({"saved": saved,
                                          "plain": lambda: paper_spectrum(op, n_iter=steps)},
                                         repeats=3)
        vector_mb = (Path(tmp) / "0" / "lanczos_v1.pt").stat().st_size / 2**20
    a, b = values["saved"], values["plain"]
    equal = bool(np.array_equal(a.nodes, b.nodes) and np.array_equal(a.weights, b.weights))
    if not equal:
        raise AssertionError("the spectrum with saved progress differs from the one without")
    per_step = {k: s / steps for k, s in seconds.items()}
    row = {"benchmark": "hessian_journal", "arch": arch, "parameters": op.dim,
           "steps": steps, "vector_mb": vector_mb, "hvp_seconds_batch10": hvp_seconds,
           "saved_seconds_per_step": per_step["saved"],
           "plain_seconds_per_step": per_step["plain"],
           "write_seconds_per_step": per_step["saved"] - per_step["plain"],
           "ratio": per_step["saved"] / per_step["plain"], "equal": equal}
    print(f"{arch} ({op.dim:,} parameters), {steps} paper Lanczos steps on one batch of 10: "
          f"{per_step['saved']:.3f} s/step saving every vector ({vector_mb:.0f} MB) vs "
          f"{per_step['plain']:.3f} s/step without ({row['ratio']:.2f}x; "
          f"+{row['write_seconds_per_step']:.3f} s/step); one product over a batch of 10: "
          f"{hvp_seconds:.3f} s; spectra equal", flush=True)
    if args.top_k:
        return [row, _top_k(op, arch, args.top_k, args.ncv, args.tol)]
    return [row]


def _top_k(op: HessianOperator, arch: str, k: int, ncv: int, tol: float) -> dict:
    """Our protocol's top-k solve with its restarts saved (``every=0``) against without."""
    saves: list[float] = []  # seconds of each restart saved

    class Counted(FolderJournal):
        def put(self, key, state):
            t0 = time.perf_counter()
            super().put(key, state)
            if key == "topk_restart":
                saves.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))

        def saved():
            saves.clear()
            work = Path(tmp) / str(next(runs))
            return top_eigenvalues(op, k, ncv=ncv, tol=tol, journal=Counted(work, every=0))

        values, seconds, _ = interleaved(
            {"saved": saved, "plain": lambda: top_eigenvalues(op, k, ncv=ncv, tol=tol)},
            repeats=3)
        restart_mb = (Path(tmp) / "0" / "topk_restart.pt").stat().st_size / 2**20
    a, b = values["saved"], values["plain"]
    if not np.array_equal(a.eigenvalues, b.eigenvalues):
        raise AssertionError("the top-k with saved progress differs from the one without")
    row = {"benchmark": "hessian_journal_topk", "arch": arch, "parameters": op.dim, "k": k,
           "ncv": ncv, "tol": tol, "num_hvp": b.num_hvp, "restarts_saved": len(saves),
           "write_seconds": sum(saves), "restart_mb": restart_mb, "saved_seconds": seconds["saved"],
           "plain_seconds": seconds["plain"], "ratio": seconds["saved"] / seconds["plain"],
           "equal": True}
    print(f"top-{k} (ncv {ncv}, tol {tol:g}, {b.num_hvp} products): {seconds['saved']:.2f} s "
          f"saving restarts ({row['restarts_saved']} saved, {restart_mb:.0f} MB each, "
          f"{row['write_seconds']:.2f} s written) vs "
          f"{seconds['plain']:.2f} s without ({row['ratio']:.3f}x); eigenvalues equal",
          flush=True)
    return row
