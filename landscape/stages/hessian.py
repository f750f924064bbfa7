"""Hessian stage: the Hessian of a run's training loss at init and after training (one unit
per checkpoint), by our protocol or the paper's.

The evaluation set is the first ``n_samples`` training images, without augmentation in a
fixed order (``augment=false``) or with one seeded draw of the training augmentation in a
seeded order (``augment=true``); the loss is their mean cross-entropy (no weight decay).

``protocol=default`` (unit ``hessian_<checkpoint>``): rows ``hessian_eigenvalue`` and
``hessian_residual`` (``index`` = rank, 1 = largest), ``hessian_trace`` and
``hessian_trace_stderr``, SLQ ``hessian_density_node`` / ``hessian_density_weight`` (``index``
= run * n_iter + step), ``hessian_converged``.
``protocol=paper`` (unit ``hessian_paper_<checkpoint>``): one ``density_iter``-step Lanczos
run from the all-ones vector (:func:`~landscape.hessian.paper_spectrum`): its nodes and weights
as ``hessian_density_node`` / ``hessian_density_weight`` (``index`` = step).
Both: ``hessian_num_hvp``, ``hessian_seconds`` (over every attempt, the work kept);
``note`` records the BatchNorm mode and the evaluation set.

A unit saves its progress in ``checkpoints/hessian/<unit>/`` (a
:class:`~landscape.stages.scratch.FolderJournal`, written every minute: the paper's Lanczos
basis vectors; our top-k solve's last restart, SLQ runs and trace samples); stopped on the way and
run again from the same network and settings, it goes on from there to the uninterrupted
unit's rows. The folder is removed when the unit returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from torch.nn import functional as F

from landscape import results
from landscape.hessian import (
    BN_MODES, EIGEN_BACKENDS, DensityResult, HessianOperator, NoSecondDerivativeError,
    SolverOptions, hessian_trace, paper_spectrum, spectral_density, top_eigenvalues,
)
from landscape.identity import RunIdentity
from landscape.seeds import HESSIAN, HESSIAN_DATA, stream_seed
from landscape.stages.base import (
    Output, RunContext, Stage, Unit, check_checkpoints, check_number, check_protocol,
    register_stage,
)
from landscape.stages.batches import evaluation_batches
from landscape.stages.scratch import FolderJournal, unit_progress

log = logging.getLogger("landscape")


@dataclass
class HessianConfig:
    enabled: bool = False
    checkpoints: list[str] = field(default_factory=lambda: ["init", "final"])
    protocol: str = "default"  # default (ours) | paper (the released procedure)
    k: int = 90  # top eigenvalues
    which: str = "LA"  # LA: largest algebraic | LM: largest magnitude
    n_samples: int = 1000  # training images in the evaluation set
    batch_size: int = 250
    augment: bool = False  # one seeded draw of the training augmentation, in a seeded order
    bn_mode: str = "eval"  # eval | recalibrated | train
    tol: float = 1e-4  # residual tolerance relative to |lambda_max|
    max_iter: Optional[int] = None  # cap on Hessian-vector products (None = backend default)
    backend: str = "lanczos"  # lanczos | scipy | pyhessian
    density_runs: int = 4  # SLQ runs (0 = no density); the top-k run is reused as one
    density_iter: int = 60  # Lanczos steps per density run (protocol=paper: its one run)
    trace_samples: int = 50  # Hutchinson samples (0 = no trace)
    save_eigenvectors: int = 0  # keep the top n eigenvectors (slice.directions=hessian), <= k


# The released procedure: BN on the statistics of batches of 10 augmented training images;
# the paper's preset (configs/hessian/paper.yaml) adds n_samples 10000 and 90 steps.
PAPER_REQUIRES = {"bn_mode": "train", "batch_size": 10, "augment": True}
PAPER_UNUSED = ("k", "which", "tol", "max_iter", "backend", "density_runs", "trace_samples",
                "save_eigenvectors")


def validate(cfg: HessianConfig) -> None:
    check_checkpoints("hessian", cfg.checkpoints)
    for name, allowed in (("which", ("LA", "LM")), ("bn_mode", BN_MODES),
                          ("backend", EIGEN_BACKENDS.names())):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"hessian.{name} must be one of {tuple(allowed)}, "
                             f"got {getattr(cfg, name)!r}")
    for name in ("k", "n_samples", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"hessian.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.density_runs < 0 or cfg.trace_samples < 0 or cfg.density_iter < 2:
        raise ValueError("hessian.density_runs and hessian.trace_samples must be >= 0 and "
                         "hessian.density_iter >= 2")
    if cfg.trace_samples == 1:
        raise ValueError("hessian.trace_samples must be 0 (no trace) or >= 2 (its standard "
                         "error needs two samples), got 1")
    if cfg.backend == "pyhessian" and cfg.which != "LM" and cfg.protocol != "paper":
        raise ValueError(f"hessian.backend=pyhessian finds the eigenvalues of largest "
                         f"magnitude (power iteration), not hessian.which={cfg.which}: set "
                         "hessian.which=LM with it, or choose hessian.backend=lanczos or scipy")
    check_number("hessian.tol", cfg.tol, above=0)
    if not 0 <= cfg.save_eigenvectors <= cfg.k:
        raise ValueError(f"hessian.save_eigenvectors must be in 0..hessian.k={cfg.k}, got "
                         f"{cfg.save_eigenvectors}")
    if cfg.bn_mode == "train" and cfg.n_samples % cfg.batch_size:
        multiple = cfg.n_samples - cfg.n_samples % cfg.batch_size or cfg.batch_size
        raise ValueError(
            f"hessian.bn_mode=train normalises each batch of hessian.batch_size="
            f"{cfg.batch_size} by its own statistics: hessian.n_samples={cfg.n_samples} leaves "
            f"a last batch of {cfg.n_samples % cfg.batch_size}, another network; choose a "
            f"multiple, e.g. hessian.n_samples={multiple}")
    if cfg.max_iter is not None and cfg.max_iter < 1:
        raise ValueError(f"hessian.max_iter must be >= 1 or null, got {cfg.max_iter}")
    check_protocol("hessian", cfg, requires=PAPER_REQUIRES, unused=PAPER_UNUSED)


@register_stage
class HessianStage(Stage):
    """One unit per checkpoint; one Hessian operator per unit serves top-k, density and trace."""

    name = "hessian"
    perturbs_parameters = True
    config_field = "hessian"

    def validate(self, config: HessianConfig) -> None:
        validate(config)

    def validate_for(self, config: HessianConfig, identity: RunIdentity) -> None:
        """hessian.k eigenvalues exist: at most one per parameter (our protocol's top-k)."""
        if config.protocol == "default" and config.k > identity.num_params:
            raise ValueError(f"hessian.k={config.k} exceeds the {identity.num_params} "
                             f"parameters of {identity.arch} (width {identity.width:g}), the "
                             f"dimension of its Hessian; choose hessian.k <= "
                             f"{identity.num_params}")

    def stale_reason(self, config: HessianConfig, out_dir: Path, unit: str,
                     seeds: Optional[list[int]] = None) -> Optional[str]:
        """Also recomputes a ``bn_mode=train`` unit written before the batches had to be
        equal, whose evaluation set (a training set under ``n_samples``) ended in a partial
        batch: its BatchNorm normalised a few images by their own statistics."""
        reason = super().stale_reason(config, out_dir, unit, seeds)
        if reason is None and config.bn_mode == "train":
            notes = results.read_stage(out_dir, unit)["note"].dropna().astype(str)
            found = notes.str.extract(r"n_samples=(\d+); batch_size=(\d+)").dropna()
            if len(found) and int(found.iloc[0, 0]) % int(found.iloc[0, 1]):
                n, b = map(int, found.iloc[0])
                return (f"bn_mode=train on {n} images in batches of {b}: a partial last batch "
                        f"of {n % b} was normalised by its own statistics")
        return reason

    def units(self, config: HessianConfig) -> list[Unit]:
        tag = "paper_" if config.protocol == "paper" else ""
        return [Unit(f"hessian_{tag}{c}", {"checkpoint": c}) for c in config.checkpoints]

    def run(self, ctx: RunContext, config: HessianConfig, unit: Unit) -> Output:
        c, checkpoint = config, unit.params["checkpoint"]
        t0 = time.perf_counter()
        model = ctx.load_model(checkpoint)
        seed = stream_seed(ctx.identity.seed, HESSIAN)
        batches = evaluation_batches(ctx, c.n_samples, c.batch_size, augment=c.augment,
                                     seed=stream_seed(ctx.identity.seed, HESSIAN_DATA))
        if c.bn_mode == "train":  # a training set under n_samples: its full batches only
            batches = _full_batches(batches, c.batch_size)
        op = HessianOperator(model, F.cross_entropy, batches, bn_mode=c.bn_mode,
                             device=ctx.settings.device)
        note = (f"checkpoint={checkpoint}; protocol={c.protocol}; bn_mode={c.bn_mode}; "
                f"n_samples={op.num_examples}; batch_size={c.batch_size}; augment={c.augment}")
        try:
            with unit_progress(ctx, self, unit.name, c, model) as journal:
                rows, extra, arrays = _rows(ctx, c, op, seed, journal)
        except NoSecondDerivativeError as e:
            raise NoSecondDerivativeError(f"hessian: {ctx.identity.arch}: {e}") from None
        note += extra
        rows.append({"metric": "hessian_seconds",
                     "value": time.perf_counter() - t0 + journal.earlier})
        return Output([{"stage": unit.name, "protocol": c.protocol, "note": note, **r}
                       for r in rows], arrays)


def _rows(ctx: RunContext, c: HessianConfig, op: HessianOperator, seed: int,
          journal: FolderJournal) -> tuple[list[dict], str, dict]:
    """(rows, note, arrays) of the protocol ``c.protocol``; the progress saved in
    ``journal``."""
    if c.protocol == "paper":
        spectrum = paper_spectrum(op, n_iter=min(c.density_iter, op.dim), progress=ctx.progress,
                                  journal=journal)
        rows = _density_rows(spectrum) + [{"metric": "hessian_num_hvp",
                                           "value": spectrum.num_hvp}]
        return rows, f"; start=ones; steps={spectrum.num_hvp}", {}
    return _default_rows(ctx, c, op, seed, journal)


def _density_rows(density: DensityResult) -> list[dict]:
    return ([{"metric": "hessian_density_node", "value": v, "index": i}
             for i, v in enumerate(density.nodes.ravel())]
            + [{"metric": "hessian_density_weight", "value": v, "index": i}
               for i, v in enumerate(density.weights.ravel())])


def _default_rows(ctx: RunContext, c: HessianConfig, op: HessianOperator, seed: int,
                  journal: FolderJournal) -> tuple[list[dict], str, dict]:
    """Top-k eigenvalues, SLQ density and trace on one operator; (rows, note, arrays): the
    arrays hold the top ``save_eigenvectors`` unit eigenvectors (float32 rows over the
    parameters ``names``, in that order) when asked for."""
    k = c.k  # validate_for checked k <= the parameters; check_k refuses k > op.dim
    top = top_eigenvalues(op, k, SolverOptions(which=c.which, tol=c.tol, max_iter=c.max_iter,
                                               seed=seed, progress=ctx.progress,
                                               return_eigenvectors=c.save_eigenvectors > 0),
                          backend=c.backend, journal=journal)
    arrays = {}
    if c.save_eigenvectors:
        vectors = top.eigenvectors[:c.save_eigenvectors].detach().float().cpu().numpy()
        arrays = {"eigenvectors": vectors, "eigenvalues": top.eigenvalues[:len(vectors)],
                  "names": np.array(op.names)}
    rows = [{"metric": "hessian_eigenvalue", "value": v, "index": i + 1}
            for i, v in enumerate(top.eigenvalues)]
    rows += [{"metric": "hessian_residual", "value": v, "index": i + 1}
             for i, v in enumerate(top.residuals)]
    num_hvp = top.num_hvp
    if c.density_runs:
        n_iter = min(c.density_iter, op.dim)
        tri = top.tridiagonal
        reuse = tri if tri is not None and len(tri.alphas) >= n_iter else None
        density = spectral_density(op, n_runs=c.density_runs, n_iter=n_iter, seed=seed + 1,
                                   reuse=reuse, journal=journal)
        num_hvp += density.num_hvp
        rows += _density_rows(density)
    if c.trace_samples:
        tr = hessian_trace(op, n_samples=c.trace_samples, seed=seed + 2, journal=journal)
        num_hvp += tr.num_hvp
        rows += [{"metric": "hessian_trace", "value": tr.estimate},
                 {"metric": "hessian_trace_stderr", "value": tr.stderr}]
    rows += [{"metric": "hessian_num_hvp", "value": num_hvp},
             {"metric": "hessian_converged", "value": float(top.converged)}]
    note = f"; backend={top.backend}; which={top.which}; tol={c.tol}"
    return rows, note, arrays


def _full_batches(batches: list, batch_size: int) -> list:
    """``batches`` without a partial last one (``bn_mode=train``: every batch is normalised by
    its own statistics, so a smaller one is another network); an error when none is full."""
    full = [b for b in batches if len(b[1]) == batch_size]
    if not full:
        raise ValueError(f"hessian.bn_mode=train needs at least one full batch of "
                         f"hessian.batch_size={batch_size} training images; the training set "
                         f"gave {sum(len(b[1]) for b in batches)}")
    return full
