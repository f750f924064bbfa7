"""A loss slice, a linear path and a sharpness unit stopped on the way (a preempted job) go on
from their saved progress (``journal=``, landscape.journal) to the uninterrupted result, bit
for bit, evaluating only the points they had not; in the pipeline, the slice, sharpness and
(cell-level) connectivity units go on from their scratch folders."""

from __future__ import annotations

import dataclasses
import re
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn import functional as F

from landscape import pipeline, results
from landscape.cli.submit import expand_grid
from landscape.geometry import interpolation, linear_path, loss_slice, random_direction
from landscape.geometry import slices as slices_module
from landscape.grid.status import run_states
from landscape.config import identity_dict
from landscape.identity import identify
from landscape.journal import MemoryJournal, kept
from landscape.stages import sharpness as sharpness_stage
from landscape.stages.scratch import START
from tests.test_geometry import batches, small_cnn


class Preempted(BaseException):
    """What submitit's signal handler does to a task it requeues: leave by an exception."""


class Counting:
    """A loss function counting its calls (one per batch), raising Preempted on call
    ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.calls = stop_at, 0

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop_at:
            raise Preempted
        return F.cross_entropy(out, y)


MODEL, BATCHES = small_cnn(), batches(n=2)


def _slice(loss_fn, journal=None, *, dims=2, bn="eval", n=3, directions=None):
    directions = directions or [random_direction(MODEL, seed=s) for s in range(dims)]
    return loss_slice(MODEL, BATCHES, directions, [np.linspace(-0.5, 0.5, n)] * dims,
                      loss_fn=loss_fn, bn=bn, bn_batches=BATCHES, journal=journal)


@settings(max_examples=12, deadline=None)
@given(dims=st.sampled_from([1, 2]), bn=st.sampled_from(["eval", "recalibrated"]),
       data=st.data())
def test_a_stopped_slice_goes_on_to_the_uninterrupted_grid(dims, bn, data):
    before = {k: v.clone() for k, v in MODEL.state_dict().items()}
    whole = Counting()
    full = _slice(whole, dims=dims, bn=bn)
    stop_at = data.draw(st.integers(1, whole.calls), label="stop_at")
    journal = MemoryJournal()
    with pytest.raises(Preempted):
        _slice(Counting(stop_at), journal, dims=dims, bn=bn)
    again = Counting()
    resumed = _slice(again, journal, dims=dims, bn=bn)
    assert np.array_equal(resumed.loss, full.loss)
    assert np.array_equal(resumed.accuracy, full.accuracy)
    done = (stop_at - 1) // len(BATCHES)  # points finished before the stop
    assert again.calls == whole.calls - done * len(BATCHES)
    assert all(torch.equal(v, before[k]) for k, v in MODEL.state_dict().items())


def test_a_slice_saved_for_other_directions_or_coordinates_is_not_used():
    journal = MemoryJournal()
    _slice(Counting(), journal, dims=1)
    for kwargs in ({"directions": [random_direction(MODEL, seed=7)]}, {"n": 4}):
        whole = Counting()
        full = _slice(whole, dims=1, **kwargs)
        again = Counting()
        assert np.array_equal(_slice(again, journal, dims=1, **kwargs).loss, full.loss)
        assert again.calls == whole.calls  # computed, not read


@settings(max_examples=12, deadline=None)
@given(bn=st.sampled_from(["recalibrated", "interpolated"]), data=st.data())
def test_a_stopped_linear_path_goes_on_to_the_uninterrupted_path(bn, data):
    other, alphas = small_cnn(seed=1), np.linspace(0, 1, 5)

    def path(loss_fn, journal=None):
        return linear_path(MODEL, other, BATCHES, alphas, loss_fn=loss_fn, bn=bn,
                           bn_batches=BATCHES, journal=journal, key="pair")

    whole = Counting()
    full = path(whole)
    stop_at = data.draw(st.integers(1, whole.calls), label="stop_at")
    journal = MemoryJournal()
    with pytest.raises(Preempted):
        path(Counting(stop_at), journal)
    again = Counting()
    resumed = path(again, journal)
    assert np.array_equal(resumed.loss, full.loss) and resumed.barrier == full.barrier
    assert np.array_equal(resumed.accuracy, full.accuracy)
    assert again.calls == whole.calls - (stop_at - 1) // len(BATCHES) * len(BATCHES)
    again = Counting()  # finished: read back; other alphas: computed
    assert np.array_equal(path(again, journal).loss, full.loss) and again.calls == 0
    linear_path(MODEL, other, BATCHES, alphas[:3], loss_fn=again, bn=bn, bn_batches=BATCHES,
                journal=journal, key="pair")
    assert again.calls == 3 * len(BATCHES)


def test_kept_computes_once_per_parameters():
    journal, calls = MemoryJournal(), []

    def compute():
        calls.append(1)
        return {"x": torch.tensor([len(calls)])}

    assert kept(journal, "k", {"a": 1}, compute)["x"].item() == 1
    assert kept(journal, "k", {"a": 1}, compute)["x"].item() == 1 and len(calls) == 1
    assert kept(journal, "k", {"a": 2}, compute)["x"].item() == 2
    assert kept(None, "k", {"a": 2}, compute)["x"].item() == 3  # no journal: computed


# --- the pipeline's units -----------------------------------------------------------------
def _cfg(root, seed, *extra):
    [cfg] = expand_grid(["model=small_cnn", "model.width=0.5", "data=digits", "train.epochs=1",
                         "data.train_subset=64", "data.test_subset=32", "device=cpu",
                         "num_threads=1", "progress=false", f"results_root={root}",
                         f"seed={seed}", *extra])
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two trained seeds of one cell (copied by each test)."""
    root = tmp_path_factory.mktemp("trained")
    for seed in (0, 1):
        pipeline.run(_cfg(root, seed))
    return root


def _copies(trained, tmp_path):
    for name in ("full", "stopped"):
        shutil.copytree(trained, tmp_path / name)
    return tmp_path / "full", tmp_path / "stopped"


def _rows(root, stage: str):
    df = results.load(root)
    cols = ["run_id", "unit", "metric", "seed_b", "coord_x", "coord_y", "value", "note"]
    cols = [c for c in cols if c in df]
    return (df.loc[df["stage"].astype(str).str.startswith(stage), cols]
            .sort_values(cols[:-2]).reset_index(drop=True))


def _counting(monkeypatch, module, name):
    """Patch ``module.name`` with a wrapper that counts calls and raises Preempted at call
    ``stop[0]``; returns (calls, stop)."""
    real, calls, stop = getattr(module, name), [], [0]

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop[0]:
            raise Preempted
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls, stop


def _stopped(root, extra, calls, stop, at):
    """Seed 0's run under ``root`` stopped at call ``at`` of the counted function (see
    :func:`_counting`); its checkpoints folder."""
    calls.clear()
    stop[0] = at
    with pytest.raises(Preempted):
        pipeline.run(_cfg(root, 0, *extra))
    return results.run_paths(root, identify(_cfg(root, 0)).cell_name, 0).checkpoints


def test_a_stopped_slice_unit_evaluates_only_the_points_it_had_not(trained, tmp_path,
                                                                   monkeypatch):
    full, stopped = _copies(trained, tmp_path)
    extra = ["slice.enabled=true", "slice.dims=[2]", "slice.points_2d=3",
             "slice.n_samples=48", "slice.batch_size=48"]
    calls, stop = _counting(monkeypatch, slices_module, "evaluate_batches")  # one per point
    pipeline.run(_cfg(full, 0, *extra))
    assert len(calls) == 9
    checkpoints = _stopped(stopped, extra, calls, stop, 8)
    [work] = (checkpoints / "slice").iterdir()
    assert (work / START).exists() and (work / "slice.pt").exists()
    [state] = run_states(stopped).query("unit == 'slice_2d_final'").to_dict("records")
    assert state["state"] == "started" and re.fullmatch(
        r"progress saved in checkpoints/slice/slice_2d_final \(0\.\d min of computing\)",
        state["reason"])
    calls.clear()
    stop[0] = 0
    pipeline.run(_cfg(stopped, 0, *extra))
    assert len(calls) == 2  # the points not evaluated when it stopped
    a, b = _rows(full, "slice"), _rows(stopped, "slice")
    assert len(a) == 18 and a.equals(b)
    assert not (checkpoints / "slice").exists()  # removed once the unit returned


def test_a_stopped_sharpness_unit_keeps_the_kind_it_had_finished(trained, tmp_path,
                                                                 monkeypatch):
    full, stopped = _copies(trained, tmp_path)
    extra = ["sharpness.enabled=true", "sharpness.steps=2", "sharpness.n_samples=48",
             "sharpness.batch_size=24"]
    calls, stop = _counting(monkeypatch, sharpness_stage, "worst_case_sharpness")
    pipeline.run(_cfg(full, 0, *extra))
    assert len(calls) == 2  # adaptive, standard
    calls.clear()
    stop[0] = 2
    with pytest.raises(Preempted):
        pipeline.run(_cfg(stopped, 0, *extra))
    calls.clear()
    stop[0] = 0
    pipeline.run(_cfg(stopped, 0, *extra))
    assert len(calls) == 1  # standard only
    a, b = _rows(full, "sharpness"), _rows(stopped, "sharpness")
    assert len(a) == 5 and a.equals(b)


def test_a_stopped_connectivity_unit_goes_on_at_its_next_point(trained, tmp_path, monkeypatch):
    full, stopped = _copies(trained, tmp_path)
    extra = ["connectivity.enabled=true", "connectivity.points=5",
             "connectivity.n_samples=48", "connectivity.batch_size=48"]
    calls, stop = _counting(monkeypatch, interpolation, "evaluate_batches")  # one per point
    pipeline.run_cells(full, overrides=_cfg(full, 0, *extra))
    assert len(calls) == 5  # one pair of seeds
    for seed in (0, 1):  # the runs' configs name the unit (what landscape-status reads)
        pipeline.run(_cfg(stopped, seed, *extra))
    calls.clear()
    stop[0] = 4
    with pytest.raises(Preempted):
        pipeline.run_cells(stopped, overrides=_cfg(stopped, 0, *extra))
    cell = identify(_cfg(stopped, 0)).cell_name
    scratch = results.run_paths(stopped, cell).scratch
    [work] = (scratch / "connectivity").iterdir()
    assert (work / START).exists() and (work / "path%3A0-1.pt").exists()
    [state] = run_states(stopped).query("unit == 'connectivity_final'").to_dict("records")
    assert state["state"] == "started" and state["reason"].startswith(
        "progress saved in checkpoints/connectivity/connectivity_final (")
    calls.clear()
    stop[0] = 0
    pipeline.run_cells(stopped, overrides=_cfg(stopped, 0, *extra))
    assert len(calls) == 2
    a, b = _rows(full, "connectivity"), _rows(stopped, "connectivity")
    assert len(a) == 11 and a.equals(b)
    assert not scratch.exists()  # the cell's checkpoints folder too


def test_progress_is_kept_across_a_new_checkpoint_and_dropped_for_another_span(
        trained, tmp_path, monkeypatch):
    """The progress folder is keyed by the settings the unit's DONE records: listing another
    checkpoint (which only adds a unit) keeps it, another span (another grid) empties it."""
    _, stopped = _copies(trained, tmp_path)
    extra = ["slice.enabled=true", "slice.dims=[1]", "slice.points_1d=6", "slice.n_samples=48",
             "slice.batch_size=48"]
    run_dir = results.run_paths(stopped, identify(_cfg(stopped, 0)).cell_name, 0).run_dir
    calls, stop = _counting(monkeypatch, slices_module, "evaluate_batches")

    def stopped_at(n, *more):
        calls.clear()
        stop[0] = n
        with pytest.raises(Preempted):
            pipeline.run(_cfg(stopped, 0, *extra, *more))

    stopped_at(5)  # final: 4 of 6 points saved
    stopped_at(3, "slice.checkpoints=[final,init]")  # final's 2 points left, then init's first
    assert results.is_done(run_dir, "slice_1d_final")
    stopped_at(4, "slice.checkpoints=[init]")  # init: 3 points saved
    other = _cfg(stopped, 0, *extra, "slice.checkpoints=[init]", "slice.span=0.5")
    [state] = run_states(stopped).query("unit == 'slice_1d_init'").to_dict("records")
    assert state["reason"].startswith("progress saved in checkpoints/slice/slice_1d_init (")
    # started again with another span (busy with another unit): that progress is of no use
    paths = results.run_paths(stopped, identify(other).cell_name, 0)
    results.write_run_records(paths, identity_dict(other), dataclasses.asdict(other))
    [state] = run_states(stopped).query("unit == 'slice_1d_init'").to_dict("records")
    assert state["reason"] == (
        "progress saved in checkpoints/slice/slice_1d_init is of other settings "
        "(span 1.0 -> 0.5): the next attempt starts again")
    calls.clear()
    stop[0] = 0
    pipeline.run(other)
    assert len(calls) == 6  # another span: every point again


def test_a_stopped_prune_unit_keeps_its_pruned_hessian_blocks_and_path_points(
        trained, tmp_path, monkeypatch):
    """A prune unit stopped at its dense -> pruned path's last point: the rerun computes no
    Hessian-vector product (the pruned Hessian and the blocks are kept) and evaluates the
    last point only, and its rows equal an uninterrupted unit's."""
    from landscape.hessian import HessianOperator

    full, stopped = _copies(trained, tmp_path)
    extra = ["prune.enabled=true", "prune.rates=[0.5]", "prune.hessian_k=2",
             "prune.hessian_blocks=true", "prune.hessian_trace_samples=2",
             "prune.path_points=4", "prune.geometry_samples=32",
             "prune.geometry_batch_size=32"]
    calls, stop = _counting(monkeypatch, interpolation, "evaluate_batches")  # one per point
    hvp = HessianOperator.__call__
    products = []
    monkeypatch.setattr(HessianOperator, "__call__",
                        lambda self, v: (products.append(1), hvp(self, v))[1])
    pipeline.run(_cfg(full, 0, *extra))
    assert len(calls) == 4 and len(products) > 0
    checkpoints = _stopped(stopped, extra, calls, stop, 4)
    [work] = (checkpoints / "prune").iterdir()
    assert {"top.pt", "blocks.pt", "dense_path.pt"} <= {p.name for p in work.iterdir()}
    calls.clear()
    products.clear()
    stop[0] = 0
    pipeline.run(_cfg(stopped, 0, *extra))
    assert len(calls) == 1 and len(products) == 0
    a, b = _rows(full, "prune"), _rows(stopped, "prune")
    assert {"pruned_hessian_eigenvalue", "block_hessian_trace", "dense_path_loss"} <= set(
        a["metric"]) and a.equals(b)
    assert not (checkpoints / "prune").exists()
