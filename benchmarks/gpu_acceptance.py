"""GPU acceptance (issue 23): the CUDA paths checked and measured in one command.

    python -m benchmarks gpu_acceptance -- --out DIR [--budget 480] [--quick]
    python -m benchmarks.gpu_acceptance --out DIR          (the same, without the runner)

In this order, so that a run cut off early still leaves the most important figures:

1. ``correctness`` (seconds): resident batches on the device equal the CPU's for the same
   (seed, epoch) (padded crop bit-identical, RandomResizedCrop to float tolerance); a seeded
   ``train.deterministic`` run gives the same weights twice; bf16 AMP training reaches the
   float32 accuracy band on a learnable synthetic task; evaluation runs in full precision (no
   autocast, no TF32) whatever the training settings; the compiled step gives the eager loss
   to tolerance or falls back with its logged reason; a killed and resumed run equals an
   uninterrupted one.
2. ``throughput``: training images/s and the share of a step spent waiting for the next
   batch, resident vs DataLoader (default workers), for resnet50 and vgg19 at pool levels 1
   and 4 on a generated CIFAR-10 tree (50,000 + 10,000 images) at batch 128, eager; the
   full-precision evaluation rate; the peak GPU memory beside the launcher's estimate; one
   model compiled; 1 vs 2 vs 4 runs per GPU (aggregate images/s of separate processes); the
   other models compiled, as far as the budget goes.
3. ``stages``: a resnet50 trained for one epoch through the pipeline, then the seconds of the
   paper-protocol Hessian unit (timed on 1,000 images at 2 (warm-up), 3 and 5 Lanczos steps,
   extrapolated to its 10,000 images and 90 steps), the default Hessian unit (fewer
   eigenvalues, density runs and trace samples than its defaults; seconds per HVP), the probes
   unit and the paper CKA unit (2 seeds).
4. ``summary``: the paper grid's GPU-hours from the measured epoch and stage times.

Every section has a time budget, and the whole a total one (``--budget``, default 8 min): an
item that would not fit is recorded as skipped. ``DIR/gpu_acceptance.json`` and
``DIR/gpu_acceptance.md`` (device, torch/CUDA versions, every figure with its settings) are
rewritten after every item, so a killed run leaves what it measured. The table is printed at
the end. Exit status 1 when a correctness check fails. Without CUDA: one line says so, the
``--quick`` CPU checks run (tiny models and data, the same code) and the exit status is 0
unless one of them fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import multiprocessing
import os
import platform
import queue
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

log = logging.getLogger("landscape")

JSON_NAME, MD_NAME = "gpu_acceptance.json", "gpu_acceptance.md"
DEFAULT_BUDGET_S = 480.0
NO_CUDA_LINE = ("gpu_acceptance: no CUDA device here; ran the --quick CPU checks only "
                "(the GPU figures need a CUDA machine)")
# the paper grid (configs/experiment/paper_cifar10.yaml, train=paper, prune=paper, ...)
PAPER_ARCHS, PAPER_LEVELS, PAPER_SEEDS, PAPER_EPOCHS = ("vgg19", "resnet50"), (1, 2, 3, 4), 5, 200
PAPER_PRUNE_RATES, PAPER_FINETUNE_EPOCHS = 5, 10
PAPER_HESSIAN_UNITS, PAPER_HESSIAN_STEPS = 2, 90  # init and best; one 90-step Lanczos run
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
TINY_TRAIN, TINY_TEST = 100_000, 10_000
RRC_TOL = 1e-4  # grid_sample on CUDA vs CPU: float rounding (x 1/std after normalisation)
COMPILE_RTOL = 1e-4  # compiled vs eager float32 loss (TF32 off)


# ---------------------------------------------------------------------------------------------
# Sizes: the full GPU run and the seconds-long CPU smoke run share every function.
@dataclass(frozen=True)
class Sizes:
    tree_train: int = CIFAR_TRAIN
    tree_test: int = CIFAR_TEST
    check_images: int = 1024  # correctness: images of the tree used
    check_arch: str = "resnet18"
    check_width: float = 0.25
    amp_epochs: int = 8  # the AMP-vs-float32 band on synthetic data
    amp_images: int = 512
    amp_floor: float = 0.8  # best test accuracy both must reach
    amp_band: float = 0.05  # |AMP - float32| best test accuracy
    archs: tuple[str, ...] = ("resnet50", "vgg19")
    levels: tuple[int, ...] = (1, 4)
    width: float = 1.0
    batch: int = 128
    warmup: int = 15
    steps: int = 60
    compile_backend: Optional[str] = None  # torch.compile's default (inductor)
    runs_per_gpu: tuple[int, ...] = (1, 2, 4)
    share_arch: str = "resnet50"
    share_level: int = 4
    share_steps: int = 60
    stage_arch: str = "resnet50"
    stage_width: float = 1.0
    stage_level: int = 1
    stage_data: tuple[str, ...] = ()  # extra overrides (quick: subsets)
    # Lanczos steps of the timed paper Hessian units: a warm-up unit (first-use costs), then
    # the two whose difference gives the seconds per step
    paper_steps: tuple[int, int, int] = (2, 3, 5)
    paper_images: int = 1000  # images of the timed paper units (the protocol's: 10,000)
    # the default Hessian unit, timed with fewer eigenvalues / density runs / trace samples than
    # its defaults (k=90, 4 x 60, 50: minutes); the seconds per HVP scale to any setting
    hessian_default: tuple[str, ...] = ("hessian.k=10", "hessian.density_runs=1",
                                        "hessian.density_iter=30", "hessian.trace_samples=10")
    stage_overrides: tuple[str, ...] = ()  # quick: small stage sizes

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(tree_train=320, tree_test=64, check_images=64, check_arch="small_cnn",
                   check_width=0.125, amp_epochs=2, amp_images=256, amp_floor=0.2,
                   amp_band=0.05, archs=("small_cnn",), levels=(1,), width=0.25, batch=16,
                   warmup=1, steps=3, compile_backend="eager", runs_per_gpu=(),
                   share_arch="small_cnn", share_level=1, share_steps=3,
                   stage_arch="small_cnn", stage_width=0.25, stage_level=1,
                   stage_data=("data.train_subset=128", "data.test_subset=64", "data.num_workers=0",
                               "train.batch_size=32"),
                   paper_steps=(2, 3, 4), paper_images=20,
                   hessian_default=("hessian.k=1", "hessian.density_runs=0",
                                    "hessian.trace_samples=0", "hessian.n_samples=20",
                                    "hessian.batch_size=20"),
                   stage_overrides=("probes.n_train=32", "probes.n_test=32",
                                    "probes.batch_size=32", "cka.n_inputs=32"))


# ---------------------------------------------------------------------------------------------
# Rows: every figure, check and skip is one.
def row(section: str, name: str, value: Any = None, unit: str = "", *,
        check: Optional[bool] = None, status: Optional[str] = None, settings: str = "",
        note: str = "", **extra: Any) -> dict:
    """One figure. ``check``: a correctness check (status pass/fail); else ``status``
    (default ``measured``; ``skipped``, ``error``)."""
    if status is None:
        status = "measured" if check is None else ("pass" if check else "fail")
    return {"section": section, "name": name, "value": value, "unit": unit, "status": status,
            "settings": settings, "note": note, **extra}


@dataclass
class Item:
    """One check or measurement: ``fn(ctx)`` returns rows; ``estimate_s``: its expected cost
    (an item whose estimate would overrun the section's or the total budget is skipped)."""

    name: str
    fn: Callable[["Context"], list[dict]]
    estimate_s: float = 0.0


@dataclass
class Section:
    name: str
    budget_s: float
    items: list[Item]
    checks: bool = False  # an exception here is a failed check (else an error row)
    always: bool = False  # runs whatever time is left (the summary: arithmetic only)


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    quick: bool
    work: Path  # scratch (the data tree, results roots)
    command: str = ""
    clock: Callable[[], float] = time.perf_counter
    total_budget_s: float = DEFAULT_BUDGET_S
    started: float = 0.0
    measured: dict = field(default_factory=dict)  # figures later sections use

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def tree(self) -> Path:
        return self.work / "cifar10"

    def elapsed(self) -> float:
        return self.clock() - self.started


def run_sections(sections: Sequence[Section], ctx: Context,
                 write: Callable[[list[dict]], None]) -> list[dict]:
    """Every item of every section in order, each only if its estimate fits both the
    section's budget and the total one (else a ``skipped`` row); ``write(rows)`` after each."""
    rows: list[dict] = []
    ctx.started = ctx.clock()
    for section in sections:
        section_start = ctx.clock()
        for item in section.items:
            used = ctx.clock() - section_start
            total_left = ctx.total_budget_s - ctx.elapsed()
            if not section.always and (used + item.estimate_s > section.budget_s
                                       or item.estimate_s > total_left):
                why = (f"would not fit: estimated {item.estimate_s:.0f} s, "
                       f"{max(0.0, section.budget_s - used):.0f} s left of the section's "
                       f"{section.budget_s:.0f} s, {max(0.0, total_left):.0f} s of the total "
                       f"{ctx.total_budget_s:.0f} s")
                rows.append(row(section.name, item.name, status="skipped", note=why))
                write(rows)
                continue
            t0 = ctx.clock()
            try:
                out = item.fn(ctx)
            except Exception as e:  # noqa: BLE001 - recorded, the next item still runs
                line = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                log.error("gpu_acceptance %s/%s: %s\n%s", section.name, item.name, line,
                          traceback.format_exc())
                out = [row(section.name, item.name, check=False if section.checks else None,
                           status=None if section.checks else "error", note=line)]
            for r in out:
                r.setdefault("item_seconds", round(ctx.clock() - t0, 3))
            rows += out
            write(rows)
    return rows


def failed(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "fail"]


def exit_status(rows: Sequence[dict]) -> int:
    """1 when a correctness check failed, else 0."""
    return 1 if failed(rows) else 0


# ---------------------------------------------------------------------------------------------
# Output: JSON + markdown, rewritten whole (temp file + rename) after every item.
def meta(ctx: Context) -> dict:
    cuda = ctx.cuda
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": ctx.command, "quick": ctx.quick, "device": str(ctx.device),
        "device_name": torch.cuda.get_device_name(ctx.device) if cuda else platform.processor()
        or platform.machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu_memory_gib": (round(torch.cuda.get_device_properties(ctx.device).total_memory
                                 / 2**30, 1) if cuda else None),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "total_budget_s": ctx.total_budget_s,
    }


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        a = abs(v)
        return f"{v:.3g}" if a and (a < 0.01 or a >= 1e5) else (f"{v:,.0f}" if a >= 1000
                                                                   else f"{v:.3g}")
    return str(v).replace("|", "/")


def markdown(info: dict, rows: Sequence[dict]) -> str:
    head = (f"GPU acceptance (issue 23): {info['device_name']} ({info['device']}"
            + (f", {info['gpu_memory_gib']} GiB" if info.get("gpu_memory_gib") else "")
            + f"), torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, "
            f"{info['cpus']} CPUs; {info['date']}; elapsed {info.get('elapsed_s', 0):.0f} s"
            f" of a {info['total_budget_s']:.0f} s budget"
            + ("; --quick (tiny sizes, smoke run)" if info["quick"] else ""))
    lines = [head, "", f"Command: `{info['command']}`", "",
             "| section | figure | value | unit | status | settings | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in (
            "section", "name", "value", "unit", "status", "settings", "note")) + " |")
    bad = failed(rows)
    lines += ["", f"Correctness checks: {sum(r['status'] == 'pass' for r in rows)} passed, "
                  f"{len(bad)} failed" + (f" ({', '.join(r['name'] for r in bad)})" if bad
                                           else "")
              + f"; {sum(r['status'] == 'skipped' for r in rows)} items skipped, "
                f"{sum(r['status'] == 'error' for r in rows)} errors."]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def writer(out: Path, info: dict, ctx: Context) -> Callable[[list[dict]], None]:
    out.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict]) -> None:
        info["elapsed_s"] = round(ctx.elapsed(), 1)
        _write_atomic(out / JSON_NAME, json.dumps(
            {"meta": info, "rows": rows, "failed_checks": [r["name"] for r in failed(rows)]},
            indent=1, default=str))
        _write_atomic(out / MD_NAME, markdown(info, rows))

    return write


# ---------------------------------------------------------------------------------------------
# Shared helpers.
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _settings(device: torch.device, **kw):
    from landscape.device import device_settings
    return device_settings(device, **kw)


def _data_cfg(ctx: Context, **kw):
    from landscape.data import DataConfig
    return DataConfig(name="cifar10", root=str(ctx.tree), verify_md5=False, **kw)


def _ensure_tree(ctx: Context) -> None:
    from benchmarks.data_path import _cifar_tree
    if not (ctx.tree / "cifar-10-batches-py" / "batches.meta").exists():
        _cifar_tree(ctx.tree, ctx.sizes.tree_train, ctx.sizes.tree_test)


def _model(arch: str, width: float, level: int, seed: int = 0) -> nn.Module:
    from landscape.models import create_model
    torch.manual_seed(seed)
    return create_model(arch, num_classes=10, width=width, pool_level=level, input_size=32)


def _weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _train(model, train, test, cfg, ctx: Context, ckpt: Path, settings=None, **kw):
    from landscape.train import train_model
    return train_model(model, train, test, cfg, seed=0,
                       settings=settings or _settings(ctx.device), checkpoint_dir=ckpt,
                       progress=False, **kw)


def _check_bundle(ctx: Context, settings, **data_kw):
    from landscape.data import load_dataset
    from landscape.data.resident import resident_bundle
    _ensure_tree(ctx)
    cfg = _data_cfg(ctx, train_subset=ctx.sizes.check_images, test_subset=64, **data_kw)
    return resident_bundle(cfg, load_dataset(cfg), settings)


# ---------------------------------------------------------------------------------------------
# 1. Correctness.
S1 = "correctness"


def check_resident_batches(ctx: Context) -> list[dict]:
    """The resident batches of two epochs on the device vs on the CPU, same generator seeds."""
    from landscape.data import load_dataset
    from landscape.data.resident import ResidentLoader, resident_bundle
    from landscape.seeds import TRAIN_EPOCH, stream_seed
    _ensure_tree(ctx)
    rows = []
    for crop in ("pad_crop", "random_resized_crop"):
        cfg = _data_cfg(ctx, train_subset=ctx.sizes.check_images, test_subset=64, crop=crop)
        bundle = load_dataset(cfg)
        a = resident_bundle(cfg, bundle, _settings(torch.device("cpu"))).train
        b = resident_bundle(cfg, bundle, _settings(ctx.device)).train
        worst, same_labels, batches = 0.0, True, 0
        for epoch in (0, 1):
            ga, gb = torch.Generator(), torch.Generator()
            ga.manual_seed(stream_seed(0, TRAIN_EPOCH, epoch))
            gb.manual_seed(stream_seed(0, TRAIN_EPOCH, epoch))
            for (xa, ya), (xb, yb) in zip(ResidentLoader(a, 128, shuffle=True, generator=ga),
                                          ResidentLoader(b, 128, shuffle=True, generator=gb)):
                xb = xb.cpu()
                if xb.shape != xa.shape:
                    worst = math.inf
                    continue
                worst = max(worst, (xa - xb).abs().max().item())
                same_labels &= torch.equal(ya, yb.cpu())
                batches += 1
        exact = crop == "pad_crop"
        ok = same_labels and (worst == 0.0 if exact else worst <= RRC_TOL)
        rows.append(row(S1, f"resident_{crop}_{ctx.device.type}_vs_cpu", worst, "max |diff|",
                        check=ok, settings=f"{batches} batches of 128 over epochs 0-1, seed 0, "
                        f"{'bit-identical' if exact else f'tol {RRC_TOL:g}'} required, "
                        f"labels {'equal' if same_labels else 'DIFFER'}",
                        note="" if ctx.cuda else "CPU vs CPU in --quick"))
    return rows


def check_deterministic(ctx: Context) -> list[dict]:
    """train.deterministic: two seeded runs from the same initial weights, the same weights."""
    from landscape.device import configure_backends
    from landscape.train import TrainConfig
    s = ctx.sizes
    data = _check_bundle(ctx, _settings(ctx.device))
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, scheduler="constant",
                      deterministic=True)
    configure_backends(ctx.device, deterministic=True)
    try:
        models = []
        for i in range(2):
            m = _model(s.check_arch, s.check_width, 1)
            with tempfile.TemporaryDirectory(dir=ctx.work) as d:
                _train(m, data.train, data.test, cfg, ctx, Path(d))
            models.append(m)
    finally:
        configure_backends(ctx.device, deterministic=False)
    same = _weights_equal(*models)
    return [row(S1, "deterministic_same_weights_twice", same, check=same,
                settings=f"{s.check_arch} width {s.check_width}, {len(data.train)} resident "
                f"images, 2 epochs, train.deterministic=true, bf16 AMP + channels_last on CUDA")]


def check_amp_band(ctx: Context) -> list[dict]:
    """bf16 AMP vs float32 training on the learnable synthetic task: best test accuracies."""
    from landscape.data import DataConfig, load_dataset
    from landscape.data.resident import resident_bundle
    from landscape.train import TrainConfig
    s = ctx.sizes
    cfg = DataConfig(name="synthetic", image_size=16, train_subset=s.amp_images,
                     test_subset=256)
    bundle = load_dataset(cfg)
    tcfg = TrainConfig(epochs=s.amp_epochs, batch_size=32, lr=0.05, scheduler="constant")
    acc = {}
    for amp in (True, False):
        settings = _settings(ctx.device, amp=amp)
        data = resident_bundle(cfg, bundle, settings)
        torch.manual_seed(0)
        from landscape.models import create_model
        m = create_model("small_cnn", num_classes=bundle.num_classes, width=0.25)
        with tempfile.TemporaryDirectory(dir=ctx.work) as d:
            out = _train(m, data.train, data.test, tcfg, ctx, Path(d), settings=settings)
        acc[amp] = out.best.test_acc
    diff = acc[True] - acc[False]
    ok = min(acc.values()) >= s.amp_floor and abs(diff) <= s.amp_band
    settings_txt = (f"small_cnn width 1/4, synthetic 16x16 ({s.amp_images} train / 256 test), "
                    f"{s.amp_epochs} epochs, batch 32; both >= {s.amp_floor}, "
                    f"|diff| <= {s.amp_band}")
    return [row(S1, "amp_bf16_best_test_acc", acc[True], check=ok, settings=settings_txt,
                note="" if ctx.cuda else "CPU: autocast is off on the CPU, both sides fp32"),
            row(S1, "float32_best_test_acc", acc[False], settings=settings_txt),
            row(S1, "amp_minus_float32_acc", diff, settings=settings_txt)]


def check_eval_full_precision(ctx: Context) -> list[dict]:
    """evaluate() under the AMP training settings: no autocast, no TF32 inside its forwards,
    float32 logits, the same loss and accuracy as under float32 settings; flags restored."""
    from landscape.train import evaluate, make_loader
    amp = _settings(ctx.device)
    data = _check_bundle(ctx, amp)
    model = amp.place(_model(ctx.sizes.check_arch, ctx.sizes.check_width, 1))
    seen = []

    def hook(_m, _i, out):
        seen.append((torch.is_autocast_enabled(ctx.device.type),
                     torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                     out.dtype))

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if ctx.cuda:  # what configure_backends sets for a non-deterministic training run
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    h = model.register_forward_hook(hook)
    try:
        loader = make_loader(data.test, 64, amp, shuffle=False)
        a = evaluate(model, loader, amp)
        b = evaluate(model, loader, _settings(ctx.device, amp=False))
        after = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        restored = (not ctx.cuda) or after == (True, True)
    finally:
        h.remove()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    autocast_off = not any(x[0] for x in seen)
    tf32_off = (not ctx.cuda) or not any(x[1] or x[2] for x in seen)
    fp32 = all(x[3] == torch.float32 for x in seen)
    same = a[1] == b[1] and abs(a[0] - b[0]) <= 1e-6 * abs(b[0])  # one cuDNN algorithm choice
    ok = autocast_off and tf32_off and fp32 and restored and same
    return [row(S1, "evaluation_full_precision", ok, check=ok,
                settings=f"{len(seen)} forwards: autocast off {autocast_off}, TF32 off "
                f"{tf32_off}, float32 logits {fp32}, TF32 flags restored {restored}, loss (to 1e-6) "
                f"and accuracy equal to float32 settings' {same} ({a[0]:.6g} / {a[1]:.4g})")]


def check_compile(ctx: Context) -> list[dict]:
    """CompiledStep vs the eager model: loss on one batch (float32, TF32 off), or the logged
    fallback reason."""
    from landscape.device import full_precision
    from landscape.train import CompiledStep
    s = ctx.sizes
    amp = _settings(ctx.device)
    model = amp.place(_model(s.check_arch, s.check_width, 1))
    gen = torch.Generator().manual_seed(0)
    x = amp.to_device(torch.randn(64, 3, 32, 32, generator=gen))
    y = torch.randint(0, 10, (64,), generator=gen).to(ctx.device)
    model.train()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        with full_precision(ctx.device):
            t0 = time.perf_counter()
            step = CompiledStep(model, True, backend=s.compile_backend)
            compiled_loss = nn.functional.cross_entropy(step(x).float(), y).item()
            compile_s = time.perf_counter() - t0
            eager_loss = nn.functional.cross_entropy(model(x).float(), y).item()
    finally:
        log.removeHandler(handler)
    backend = s.compile_backend or "inductor"
    settings_txt = (f"{s.check_arch} width {s.check_width}, batch 64, train mode, float32 "
                    f"(TF32 off), backend {backend}; compile + first call {compile_s:.1f} s")
    rel = abs(compiled_loss - eager_loss) / max(abs(eager_loss), 1e-12)
    if step.compiled:
        return [row(S1, "compiled_step_loss_vs_eager", rel, "rel diff",
                    check=rel <= COMPILE_RTOL, settings=settings_txt + f", tol {COMPILE_RTOL:g}")]
    logged = any("torch.compile failed" in r.getMessage() for r in records)
    return [row(S1, "compiled_step_fallback", step.note, check=bool(step.note) and logged,
                settings=settings_txt, note=f"fell back to eager, reason logged: {logged}")]


class _Kill(Exception):
    """Stands for a kill at the end of epoch 2, before its ``last.pt`` (``train_model``'s
    ``measure`` hook runs before it is written): the run resumes from epoch 1's."""


def check_kill_resume(ctx: Context) -> list[dict]:
    """Train 3 epochs; separately, train, 'kill' in epoch 2 (after epoch 1's checkpoint),
    resume from last.pt: the final weights and history equal the uninterrupted run's."""
    from landscape.device import configure_backends
    from landscape.train import TrainConfig
    s = ctx.sizes
    data = _check_bundle(ctx, _settings(ctx.device))
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, scheduler="cosine", deterministic=True)
    configure_backends(ctx.device, deterministic=True)
    try:
        whole = _model(s.check_arch, s.check_width, 1)
        with tempfile.TemporaryDirectory(dir=ctx.work) as d:
            a = _train(whole, data.train, data.test, cfg, ctx, Path(d))
        resumed = _model(s.check_arch, s.check_width, 1)

        def kill(record):
            if record.epoch == 2:
                raise _Kill

        with tempfile.TemporaryDirectory(dir=ctx.work) as d:
            try:
                _train(resumed, data.train, data.test, cfg, ctx, Path(d), measure=kill)
            except _Kill:
                pass
            resumed = _model(s.check_arch, s.check_width, 1, seed=1)  # a fresh process's model
            b = _train(resumed, data.train, data.test, cfg, ctx, Path(d))
    finally:
        configure_backends(ctx.device, deterministic=False)
    same = _weights_equal(whole, resumed)
    same_hist = [(r.train_loss, r.test_acc) for r in a.history] == [
        (r.train_loss, r.test_acc) for r in b.history]
    return [row(S1, "kill_and_resume_equals_uninterrupted", same and same_hist,
                check=same and same_hist and 1 <= b.resumed_from_epoch < cfg.epochs,
                settings=f"{s.check_arch} width {s.check_width}, 3 epochs, killed in epoch 2 "
                f"(resumed from {b.resumed_from_epoch}), deterministic; weights equal {same}, "
                f"history equal {same_hist}")]


# ---------------------------------------------------------------------------------------------
# 2. Throughput.
S2 = "throughput"


def train_rate(model: nn.Module, loader, settings, warmup: int, steps: int,
               step_model=None) -> dict:
    """Images/s of ``steps`` training steps after ``warmup`` ones, and the share of that time
    the loop waited for the next batch (``next()`` of the loader; the device queue is synced
    at the end only, as in training)."""
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step_model = step_model or model
    model.train()
    it = iter(loader)
    wait = 0.0
    n = 0
    t_start = None
    for i in range(warmup + steps):
        if i == warmup:
            _sync(settings.device)
            t_start, wait, n = time.perf_counter(), 0.0, 0
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        wait += time.perf_counter() - t0
        x, y = settings.to_device(x), y.to(settings.device, non_blocking=settings.non_blocking)
        with settings.autocast():
            loss = crit(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    _sync(settings.device)
    total = time.perf_counter() - t_start
    del it
    return {"images_per_s": n / total, "wait_share": wait / total, "images": n, "seconds": total}


def memory_rows(section: str, label: str, estimate_bytes: Optional[int],
                device: torch.device, settings: str = "") -> list[dict]:
    """The launcher's estimate beside the measured peak GPU memory (allocated and reserved by
    the caching allocator, without the CUDA context) since the last peak reset."""
    from landscape.grid.gpu import CONTEXT_BYTES
    if device.type != "cuda":
        return [row(section, f"{label}_gpu_memory", None, "GiB", status="skipped",
                    note="no CUDA device: nothing to measure",
                    estimate_gib=None if estimate_bytes is None else estimate_bytes / 2**30)]
    peak = torch.cuda.max_memory_allocated(device)
    reserved = torch.cuda.max_memory_reserved(device)
    est = None if estimate_bytes is None else estimate_bytes / 2**30
    note = ("" if est is None else
            f"estimate {est:.2f} GiB (incl. a {CONTEXT_BYTES / 2**30:.2f} GiB context) = "
            f"{estimate_bytes / max(reserved, 1):.2f}x the measured reserved peak")
    return [row(section, f"{label}_gpu_memory_peak_allocated", peak / 2**30, "GiB",
                settings=settings),
            row(section, f"{label}_gpu_memory_peak_reserved", reserved / 2**30, "GiB",
                settings=settings, note=note, estimate_gib=est,
                estimate_over_reserved=None if est is None else estimate_bytes / max(reserved, 1))]


def run_config(ctx: Context, arch: str, level: int, width: float, *extra: str):
    """The RunConfig of ``landscape-run`` with these overrides (for the launcher's estimate)."""
    from landscape.cli.submit import expand_grid
    (cfg,) = expand_grid([f"model={arch}", f"model.pool_level={level}", f"model.width={width}",
                          "data=cifar10", f"data.root={ctx.tree}", "data.verify_md5=false",
                          f"results_root={ctx.work / 'results'}", "progress=false", *extra])
    return cfg


def _full_bundle(ctx: Context):
    from landscape.data import load_dataset
    from landscape.data.resident import resident_bundle
    if "bundle" not in ctx.measured:
        _ensure_tree(ctx)
        cfg = _data_cfg(ctx, crop_padding=4)
        bundle = load_dataset(cfg)
        ctx.measured["bundle"] = bundle
        ctx.measured["resident"] = resident_bundle(cfg, bundle, _settings(ctx.device))
    return ctx.measured["bundle"], ctx.measured["resident"]


def _loader(ctx: Context, path: str, settings):
    from landscape.train import default_workers, make_loader
    bundle, resident = _full_bundle(ctx)
    gen = torch.Generator().manual_seed(0)
    if path == "resident":
        return make_loader(resident.train, ctx.sizes.batch, settings, shuffle=True,
                           generator=gen), "resident"
    workers = default_workers(None, ctx.device)
    return (make_loader(bundle.train, ctx.sizes.batch, settings, shuffle=True,
                        num_workers=None, generator=gen), f"DataLoader, {workers} workers")


def measure_path(ctx: Context, arch: str, level: int, path: str, compiled: bool) -> list[dict]:
    from landscape.device import configure_backends
    from landscape.train import CompiledStep, evaluate, make_loader
    s = ctx.sizes
    settings = _settings(ctx.device)
    configure_backends(ctx.device, deterministic=False)  # as a run with the default settings
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    model = settings.place(_model(arch, s.width, level))
    loader, how = _loader(ctx, path, settings)
    step = CompiledStep(model, True, backend=s.compile_backend) if compiled else None
    t0 = time.perf_counter()
    r = train_rate(model, loader, settings, s.warmup, s.steps, step)
    mode = "compiled" if compiled else "eager"
    if compiled and not step.compiled:
        mode = f"eager (compile fell back: {step.note})"
    label = f"{arch}_L{level}_{path}_{'compiled' if compiled else 'eager'}"
    settings_txt = (f"{arch} width {s.width} pool level {level}, {how}, batch {s.batch}, "
                    f"bf16 AMP + channels_last on CUDA, {mode}, {s.steps} steps after "
                    f"{s.warmup} warm-up ({time.perf_counter() - t0:.1f} s with warm-up)")
    rows = [row(S2, f"{label}_train", r["images_per_s"], "images/s", settings=settings_txt,
                arch=arch, pool_level=level, path=path, compiled=compiled),
            row(S2, f"{label}_wait_share", r["wait_share"], "of step time",
                settings=settings_txt)]
    if path == "resident" and not compiled:
        ctx.measured.setdefault("train_images_per_s", {})[(arch, level)] = r["images_per_s"]
        _, resident = _full_bundle(ctx)
        test = make_loader(resident.test, 512, settings, shuffle=False)
        evaluate(model, test, settings)  # warm-up (cuDNN autotuning of the fp32 kernels)
        _sync(ctx.device)
        t1 = time.perf_counter()
        evaluate(model, test, settings)
        _sync(ctx.device)
        eval_s = time.perf_counter() - t1
        n_test = len(resident.test)
        ctx.measured.setdefault("eval_images_per_s", {})[(arch, level)] = n_test / eval_s
        rows.append(row(S2, f"{arch}_L{level}_evaluate", n_test / eval_s, "images/s",
                        settings=f"evaluate(): full precision, batch 512, {n_test} resident "
                        "test images (second pass)"))
        from landscape.grid.gpu import estimate_run_bytes
        est = estimate_run_bytes(run_config(ctx, arch, level, s.width))
        rows += memory_rows(S2, f"{arch}_L{level}", est, ctx.device,
                            settings="training + evaluation in this process, resident data "
                            "(the whole tree) shared by every model of this section")
    del model, step, loader
    if ctx.cuda:
        torch.cuda.empty_cache()
    return rows


def _share_worker(tree: str, arch: str, level: int, width: float, batch: int, warmup: int,
                  steps: int, device: str, threads: int, barrier, results) -> None:
    """One of k processes sharing a GPU: resident data, warm-up, wait for the others, then
    ``steps`` timed training steps. Puts (images, start, end, peak reserved bytes)."""
    try:
        torch.set_num_threads(threads)
        from landscape.device import configure_backends
        from landscape.data import DataConfig, load_dataset
        from landscape.data.resident import resident_bundle
        from landscape.train import make_loader
        dev = torch.device(device)
        configure_backends(dev, deterministic=False)
        settings = _settings(dev)
        cfg = DataConfig(name="cifar10", root=tree, verify_md5=False)
        data = resident_bundle(cfg, load_dataset(cfg), settings)
        model = settings.place(_model(arch, width, level))
        loader = make_loader(data.train, batch, settings, shuffle=True,
                             generator=torch.Generator().manual_seed(0))
        train_rate(model, loader, settings, 0, warmup)
        barrier.wait(timeout=600)
        t0 = time.time()
        r = train_rate(model, loader, settings, 0, steps)
        t1 = time.time()
        peak = torch.cuda.max_memory_reserved(dev) if dev.type == "cuda" else 0
        results.put(("ok", r["images"], t0, t1, peak))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass
        results.put(("error", f"{type(e).__name__}: {e}".splitlines()[0][:300], 0, 0, 0))


def aggregate_rate(out: Sequence[tuple]) -> float:
    """Images/s of processes that trained at once: all their images over the window from the
    first start to the last end (``out``: their ``("ok", images, start, end, peak)``)."""
    return sum(o[1] for o in out) / (max(o[3] for o in out) - min(o[2] for o in out))


def measure_runs_per_gpu(ctx: Context, k: int) -> list[dict]:
    """k spawned processes training at once on the one device; aggregate images/s over the
    window from the first start to the last end, and the launcher's memory check."""
    from landscape.grid.gpu import check_gpu_memory, estimate_run_bytes, free_memory
    from landscape.grid.launcher import SubmissionError
    s = ctx.sizes
    _ensure_tree(ctx)
    fits, est, note = None, None, ""
    try:
        cfg = run_config(ctx, s.share_arch, s.share_level, s.width)
        est = estimate_run_bytes(cfg)
        if ctx.cuda:
            check_gpu_memory([cfg], k, free_memory([ctx.device.index or 0]))
            fits = True
    except SubmissionError as e:
        fits, note = False, str(e)
    mp = multiprocessing.get_context("spawn")
    barrier, results = mp.Barrier(k), mp.Queue()
    threads = max(1, (os.cpu_count() or 1) // k)
    args = (str(ctx.tree), s.share_arch, s.share_level, s.width, s.batch, s.warmup,
            s.share_steps, str(ctx.device), threads, barrier, results)
    procs = [mp.Process(target=_share_worker, args=args) for _ in range(k)]
    for p in procs:
        p.start()
    out, deadline = [], time.perf_counter() + 600
    while len(out) < k:
        try:
            out.append(results.get(timeout=5))
        except queue.Empty:
            if time.perf_counter() > deadline:
                for p in procs:
                    p.terminate()
                raise RuntimeError(f"runs_per_gpu={k}: no result after 600 s") from None
            if not any(p.is_alive() for p in procs) and results.empty():
                codes = [p.exitcode for p in procs]
                out += [("error", f"a process died (exit codes {codes})", 0, 0, 0)] * (k - len(out))
    for p in procs:
        p.join(timeout=60)
    errors = [o[1] for o in out if o[0] != "ok"]
    if errors:
        raise RuntimeError(f"{len(errors)} of {k} processes failed: {errors[0]}")
    settings_txt = (f"{k} processes, each {s.share_arch} width {s.width} pool level "
                    f"{s.share_level}, resident data, batch {s.batch}, {s.share_steps} timed "
                    f"steps after {s.warmup} warm-up, started together")
    peak = max(o[4] for o in out)
    rows = [row(S2, f"runs_per_gpu_{k}_aggregate", aggregate_rate(out), "images/s",
                settings=settings_txt, runs_per_gpu=k)]
    if ctx.cuda:
        rows.append(row(S2, f"runs_per_gpu_{k}_peak_reserved_per_process", peak / 2**30, "GiB",
                        settings=settings_txt,
                        note=(f"launcher estimate {est / 2**30:.2f} GiB per run (context "
                              f"included); check_gpu_memory for {k}: "
                              f"{'fits' if fits else 'REFUSED: ' + note}") if est else note))
    return rows


# ---------------------------------------------------------------------------------------------
# 3. Stage costs.
S3 = "stages"


def _stage_cfg(ctx: Context, seed: int, *extra: str):
    s = ctx.sizes
    return run_config(ctx, s.stage_arch, s.stage_level, s.stage_width, "train=paper",
                      "train.epochs=1", f"seed={seed}", f"device={ctx.device}",
                      *s.stage_data, *extra)


def _unit_seconds(run_dir: Path, unit: str) -> float:
    from landscape import results
    done = results.read_done(Path(run_dir), unit) or {}
    if done.get("status") != "ok" or "seconds" not in done:
        raise RuntimeError(f"unit {unit} did not finish ok: {done}")
    return float(done["seconds"])


def stage_train(ctx: Context) -> list[dict]:
    from landscape.pipeline import run
    summary = run(_stage_cfg(ctx, 0))
    ctx.measured["stage_run_dir"] = summary.run_dir
    sec = _unit_seconds(summary.run_dir, "train")
    s = ctx.sizes
    return [row(S3, "train_1_epoch_unit", sec, "s",
                settings=f"landscape-run model={s.stage_arch} model.pool_level={s.stage_level}"
                f" data=cifar10 (generated tree) train=paper train.epochs=1 "
                f"{' '.join(s.stage_data)}".strip(),
                note="includes loading the data onto the device, init.pt and evaluation")]


def _unit_rows(run_dir: Path, unit: str) -> dict[str, float]:
    from landscape.results.store import read_stage
    df = read_stage(Path(run_dir), unit)
    return {m: float(v) for m, v in zip(df["metric"], df["value"]) if m.startswith("hessian_")
            and not m.startswith(("hessian_density", "hessian_eigen", "hessian_resid"))}


def extrapolate_steps(secs: dict[int, float], steps: int, scale: float = 1.0
                      ) -> tuple[float, float, float]:
    """(seconds per step, fixed seconds, seconds of a ``steps``-step unit with ``scale`` times
    the images) from units timed at the last two step counts of ``secs`` (the first one, a
    warm-up, is not used): per step = the difference over the steps' difference, fixed = the
    rest of the shorter unit (both clamped at 0); a step's cost grows with the images."""
    (m1, t1), (m2, t2) = list(secs.items())[-2:]
    per_step = max(0.0, (t2 - t1) / (m2 - m1))
    fixed = max(0.0, t1 - m1 * per_step)
    return per_step, fixed, fixed + steps * per_step * scale


def stage_hessian_paper(ctx: Context) -> list[dict]:
    """The paper unit (10,000 images in batches of 10, BN on batch statistics, one 90-step
    Lanczos run) timed at two short lengths on ``paper_images`` images: seconds per step from
    the difference, scaled to 10,000 images, times 90, plus the fixed cost."""
    from landscape.pipeline import run
    s = ctx.sizes
    secs = {}
    over = ["hessian=paper", "hessian.checkpoints=[best]", f"hessian.n_samples={s.paper_images}"]
    for steps in s.paper_steps:
        summary = run(_stage_cfg(ctx, 0, *over, f"hessian.density_iter={steps}"))
        secs[steps] = _unit_seconds(summary.run_dir, "hessian_paper_best")
    m0, m1, m2 = secs
    full_images = 10_000
    scale = full_images / s.paper_images
    per_step, fixed, unit = extrapolate_steps(secs, PAPER_HESSIAN_STEPS, scale)
    ctx.measured["hessian_paper_unit_s"] = unit
    cmd = " ".join(over)
    return [row(S3, f"hessian_paper_unit_{m}_steps_{s.paper_images}_images", t, "s",
                settings=f"{cmd} hessian.density_iter={m}",
                note="warm-up (first use)" if m == m0 else "") for m, t in secs.items()] + [
        row(S3, f"hessian_paper_seconds_per_lanczos_step_{s.paper_images}_images", per_step,
            "s", settings=f"slope between {m1} and {m2} steps"),
        row(S3, "hessian_paper_unit_90_steps_10000_images", unit, "s",
            settings=f"{fixed:.1f} s fixed + 90 x {per_step:.3g} s x {scale:g} "
                     f"({full_images:,} / {s.paper_images:,} images)",
            note="extrapolated from the two measured units: a step is one HVP over the "
                 "unit's images, in batches of its batch size, so linear in both")]


def stage_hessian_default(ctx: Context) -> list[dict]:
    from landscape.pipeline import run
    s = ctx.sizes
    extra = ["hessian.enabled=true", "hessian.checkpoints=[best]", *s.hessian_default,
             *[o for o in s.stage_overrides if o.startswith("hessian.")]]
    summary = run(_stage_cfg(ctx, 0, *extra))
    sec = _unit_seconds(summary.run_dir, "hessian_best")
    hvps = _unit_rows(summary.run_dir, "hessian_best").get("hessian_num_hvp")
    ctx.measured["hessian_default_unit_s"] = sec
    rows = [row(S3, "hessian_default_unit_reduced", sec, "s", settings=" ".join(extra),
                note="fewer eigenvalues, density runs and trace samples than the defaults "
                     "(k=90, 4 x 60 steps, 50 samples); scale by HVPs")]
    if hvps:
        rows.append(row(S3, "hessian_default_seconds_per_hvp", sec / hvps, "s",
                        settings=f"{sec:.1f} s / {hvps:.0f} HVPs (unit total, fixed cost "
                                 "included) over hessian.n_samples images"))
    return rows


def stage_probes(ctx: Context) -> list[dict]:
    from landscape.pipeline import run
    s = ctx.sizes
    extra = ["probes.enabled=true", *[o for o in s.stage_overrides if o.startswith("probes.")]]
    summary = run(_stage_cfg(ctx, 0, *extra))
    sec = _unit_seconds(summary.run_dir, "probes_final")
    ctx.measured["probes_unit_s"] = sec
    return [row(S3, "probes_unit", sec, "s", settings=" ".join(extra))]


def stage_cka(ctx: Context) -> list[dict]:
    from landscape.identity import identify
    from landscape.pipeline import run, run_cell
    from landscape.results import CELL_DIR
    s = ctx.sizes
    run(_stage_cfg(ctx, 1))  # a second seed, one epoch
    extra = ["cka=paper", *[o for o in s.stage_overrides if o.startswith("cka.")]]
    cfg = _stage_cfg(ctx, 0, *extra)
    cell = identify(cfg).cell_name
    root = Path(cfg.results_root)
    run_cell(root, cell, overrides=cfg)
    sec = _unit_seconds(root / cell / CELL_DIR, "cka_paper_best")
    ctx.measured["cka_paper_2seeds_s"] = sec
    return [row(S3, "cka_paper_unit_2_seeds", sec, "s", settings=" ".join(extra),
                note="1 pair of seeds; a 5-seed cell has 10")]


# ---------------------------------------------------------------------------------------------
# 4. Summary: the paper grid's GPU-hours.
S4 = "summary"


def interpolate_levels(by_level: dict[int, float], levels: Sequence[int]) -> dict[int, float]:
    """Values at ``levels`` from those measured: as measured where measured, linear between
    the nearest measured levels, the nearest one outside them."""
    known = sorted(by_level)
    out = {}
    for lv in levels:
        if lv in by_level:
            out[lv] = by_level[lv]
            continue
        lo = max((k for k in known if k < lv), default=None)
        hi = min((k for k in known if k > lv), default=None)
        if lo is None or hi is None:
            out[lv] = by_level[lo if hi is None else hi]
        else:
            out[lv] = by_level[lo] + (by_level[hi] - by_level[lo]) * (lv - lo) / (hi - lo)
    return out


def paper_grid_hours(train_ips: dict[tuple[str, int], float],
                     eval_ips: dict[tuple[str, int], float], *,
                     hessian_paper_unit_s: Optional[float] = None,
                     cka_2seeds_s: Optional[float] = None,
                     ref: tuple[str, int] = ("resnet50", 1),
                     archs: Sequence[str] = PAPER_ARCHS, levels: Sequence[int] = PAPER_LEVELS,
                     seeds: int = PAPER_SEEDS, epochs: int = PAPER_EPOCHS,
                     n_train: int = CIFAR_TRAIN, n_test: int = CIFAR_TEST,
                     prune_rates: int = PAPER_PRUNE_RATES,
                     finetune_epochs: int = PAPER_FINETUNE_EPOCHS) -> dict:
    """GPU-hours of the paper's CIFAR-10 grid (``archs`` x ``levels`` x ``seeds`` runs of
    ``epochs``) from measured training and evaluation rates (images/s by (arch, level); levels
    not measured are interpolated). Per run: ``epochs`` x (n_train / train rate + n_test /
    eval rate); fine-tuning ``prune_rates`` x ``finetune_epochs`` epochs at the same cost;
    ``PAPER_HESSIAN_UNITS`` paper Hessian units; per cell the paper CKA unit, measured over 2
    seeds and scaled to the cell's seed pairs. Stage costs measured on ``ref`` are scaled to a
    cell by its epoch time over ``ref``'s."""
    epoch_s: dict[tuple[str, int], float] = {}
    interpolated = []
    for arch in archs:
        rates = {lv: n_train / train_ips[(a, lv)] + n_test / eval_ips[(a, lv)]
                 for (a, lv) in train_ips if a == arch and (a, lv) in eval_ips}
        if not rates:
            raise ValueError(f"no measured epoch of {arch}")
        for lv, sec in interpolate_levels(rates, levels).items():
            epoch_s[(arch, lv)] = sec
            if lv not in rates:
                interpolated.append(f"{arch} L{lv}")
    if ref not in epoch_s:
        ref = next(iter(epoch_s))
    pairs = seeds * (seeds - 1) // 2
    cells = []
    for (arch, lv), e in epoch_s.items():
        scale = e / epoch_s[ref]
        train_h = seeds * epochs * e / 3600
        finetune_h = seeds * prune_rates * finetune_epochs * e / 3600
        hess_h = (seeds * PAPER_HESSIAN_UNITS * hessian_paper_unit_s * scale / 3600
                  if hessian_paper_unit_s is not None else None)
        cka_h = cka_2seeds_s * pairs * scale / 3600 if cka_2seeds_s is not None else None
        cells.append({"arch": arch, "pool_level": lv, "epoch_s": e, "train_h": train_h,
                      "finetune_h": finetune_h, "hessian_paper_h": hess_h, "cka_h": cka_h,
                      "total_h": train_h + finetune_h + (hess_h or 0) + (cka_h or 0)})
    total = {k: sum(c[k] or 0 for c in cells) for k in ("train_h", "finetune_h",
                                                        "hessian_paper_h", "cka_h", "total_h")}
    return {"cells": cells, "total": total, "runs": len(cells) * seeds, "epochs": epochs,
            "interpolated": interpolated, "ref": ref,
            "missing": [k for k, v in (("hessian_paper", hessian_paper_unit_s),
                                       ("cka", cka_2seeds_s)) if v is None]}


def summary_rows(ctx: Context) -> list[dict]:
    m = ctx.measured
    if not m.get("train_images_per_s") or not m.get("eval_images_per_s"):
        return [row(S4, "paper_grid_gpu_hours", status="skipped",
                    note="no training rate was measured (throughput section cut off)")]
    s = ctx.sizes
    g = paper_grid_hours(m["train_images_per_s"], m["eval_images_per_s"],
                         hessian_paper_unit_s=m.get("hessian_paper_unit_s"),
                         cka_2seeds_s=m.get("cka_paper_2seeds_s"),
                         ref=(s.stage_arch, s.stage_level),
                         archs=tuple(dict.fromkeys(a for a, _ in m["train_images_per_s"])))
    t = g["total"]
    where = (f"{g['runs']} CIFAR-10 runs x {g['epochs']} epochs (50,000 + 10,000 images); "
             + (f"interpolated between measured pool levels: {', '.join(g['interpolated'])}; "
                if g["interpolated"] else "")
             + (f"not measured, left out: {', '.join(g['missing'])}; " if g["missing"] else "")
             + f"stage costs measured on {g['ref'][0]} L{g['ref'][1]}, scaled by epoch time")
    rows = [row(S4, f"epoch_seconds_{c['arch']}_L{c['pool_level']}", c["epoch_s"], "s",
                settings="50,000 / training images/s + 10,000 / evaluation images/s "
                "(resident, eager)") for c in g["cells"]]
    rows += [row(S4, "paper_grid_cifar10_training_gpu_hours", t["train_h"], "GPU-h",
                 settings=where),
             row(S4, "paper_grid_cifar10_finetune_gpu_hours", t["finetune_h"], "GPU-h",
                 settings=f"{PAPER_PRUNE_RATES} rates x {PAPER_FINETUNE_EPOCHS} epochs per run "
                 "at the measured epoch time"),
             row(S4, "paper_grid_cifar10_hessian_paper_gpu_hours", t["hessian_paper_h"],
                 "GPU-h", settings=f"{PAPER_HESSIAN_UNITS} units per run (init, best)"),
             row(S4, "paper_grid_cifar10_cka_gpu_hours", t["cka_h"], "GPU-h",
                 settings=f"{PAPER_SEEDS * (PAPER_SEEDS - 1) // 2} seed pairs per cell, "
                 "scaled from 1 pair (an upper bound: Gram matrices are made once per seed)"),
             row(S4, "paper_grid_cifar10_gpu_hours", t["total_h"], "GPU-h", settings=where,
                 note="importance maps at init (64x64, 10 inits per run) not included; "
                      "Tiny ImageNet half of the grid not measured here"
                      + ("; --quick: tiny models, CPU: not a GPU figure" if ctx.quick else ""),
                 grid=g)]
    return rows


# ---------------------------------------------------------------------------------------------
def sections(sizes: Sizes, cuda: bool) -> list[Section]:
    """The sections in the issue's order, with budgets (seconds) for the full GPU run; the
    ``--quick`` CPU run takes seconds per item and uses the same budgets."""
    def path_item(arch, level, path, compiled, est):
        return Item(f"{arch}_L{level}_{path}_{'compiled' if compiled else 'eager'}",
                    lambda c: measure_path(c, arch, level, path, compiled), est)

    throughput = [path_item(a, lv, "resident", False, 10) for a in sizes.archs
                  for lv in sizes.levels]
    throughput += [path_item(a, lv, "dataloader", False, 12) for a in sizes.archs
                   for lv in sizes.levels]
    compiled = [path_item(a, lv, "resident", True, 60) for lv in sizes.levels
                for a in sizes.archs]  # inductor: about a minute per model; L1 first
    throughput += compiled[:1]  # one compiled model before the multi-process runs
    throughput += [Item(f"runs_per_gpu_{k}", lambda c, k=k: measure_runs_per_gpu(c, k),
                        15 + 5 * k) for k in sizes.runs_per_gpu] or [
        Item("runs_per_gpu", lambda c: [row(S2, "runs_per_gpu", status="skipped", note=(
            "not in --quick: spawning processes takes longer than the rest; "
            "tests/test_gpu_acceptance.py runs the worker in-process"))])]
    throughput += compiled[1:]
    return [
        Section(S1, 110, [Item("resident_batches", check_resident_batches, 3),
                         Item("deterministic", check_deterministic, 5),
                         Item("amp_band", check_amp_band, 8),
                         Item("evaluation_full_precision", check_eval_full_precision, 2),
                         Item("compile", check_compile, 40),
                         Item("kill_resume", check_kill_resume, 8)], checks=True),
        Section(S2, 220, throughput),
        Section(S3, 140, [Item("train_1_epoch", stage_train, 25),
                          Item("hessian_paper", stage_hessian_paper, 45),
                          Item("hessian_default", stage_hessian_default, 25),
                          Item("probes", stage_probes, 15),
                          Item("cka_paper", stage_cka, 25)]),
        Section(S4, 10, [Item("paper_grid_gpu_hours", summary_rows, 0)], always=True),
    ]


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and data on the CPU (seconds; the test suite's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for gpu_acceptance.json and .md (required on CUDA "
                             "without --quick)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="total seconds; items that would not fit are skipped")
    parser.add_argument("--device", default="cuda", help="the CUDA device (cuda, cuda:N)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    if not cuda:
        print(NO_CUDA_LINE, flush=True)
    if cuda and not quick and args.out is None:
        parser.error("--out DIR is required for the GPU run (where gpu_acceptance.json and "
                     ".md go)")
    device = torch.device(args.device if cuda and not args.quick else "cpu")
    # as configure_backends sets it for a deterministic run, before cuBLAS starts here
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_acceptance_"))
    command = " ".join([Path(sys.executable).name, "-m", "benchmarks.gpu_acceptance",
                        *(argv if argv is not None else sys.argv[1:])])
    sizes = Sizes.quick() if quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="gpu_acceptance_work_") as work:
        ctx = Context(device, sizes, quick, Path(work), command=command,
                      total_budget_s=args.budget)
        info = meta(ctx)
        write = writer(out, info, ctx)
        rows = run_sections(sections(sizes, ctx.cuda), ctx, write)
    print(markdown(info, rows), flush=True)
    print(f"written: {out / JSON_NAME}, {out / MD_NAME}", flush=True)
    status = exit_status(rows)
    if status:
        raise SystemExit(status)
    return rows


if __name__ == "__main__":
    main()
