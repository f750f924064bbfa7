"""A Hessian computation stopped on the way (a preempted job) goes on from its saved progress
(``journal=``, landscape.journal) to the uninterrupted result, bit for bit, spending
only the Hessian-vector products it had not done; in the pipeline, a Hessian unit goes on from
its scratch folder (landscape.stages.scratch.FolderJournal), and a probes unit fits only the
layers it had not."""

from __future__ import annotations

import json
import math
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from landscape import pipeline, results
from landscape.cli.submit import expand_grid
from landscape.hessian import (
    HessianOperator, MemoryJournal, hutchinson_trace, lanczos_quadrature, lanczos_top_k,
    slq_density, top_eigenvalues,
)
from landscape.hessian import lanczos
from landscape.identity import identify
from landscape.stages import scratch
from landscape.stages.scratch import FolderJournal, SECONDS, START


class Preempted(BaseException):
    """What submitit's signal handler does to a task it requeues: leave by an exception."""


class Counting:
    """``v -> A v`` on a fixed symmetric float64 matrix, counting calls; raises Preempted on
    call number ``stop_at``."""

    def __init__(self, a: torch.Tensor, stop_at: int | None = None) -> None:
        self.a, self.stop_at, self.calls = a, stop_at, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop_at:
            raise Preempted
        return self.a @ v


def _matrix(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (x + x.T) / 2


def _stopped_then_resumed(run, a: torch.Tensor, stop_at: int, journal=None):
    """``run(matvec, journal)`` stopped at call ``stop_at``, then again with the same journal:
    (the result, the calls of the second attempt)."""
    journal = MemoryJournal() if journal is None else journal
    with pytest.raises(Preempted):
        run(Counting(a, stop_at), journal)
    again = Counting(a)
    return run(again, journal), again.calls


def _same_density(x, y) -> None:
    assert np.array_equal(x.nodes, y.nodes) and np.array_equal(x.weights, y.weights)
    assert x.num_hvp == y.num_hvp and x.dim == y.dim


@settings(max_examples=15, deadline=None)
@given(n=st.integers(4, 30), seed=st.integers(0, 1000), data=st.data())
def test_the_papers_lanczos_run_goes_on_to_the_uninterrupted_spectrum(n, seed, data):
    a = _matrix(n, seed)
    start = torch.ones(n, dtype=torch.float64)
    steps = data.draw(st.integers(1, n + 3), label="n_iter")
    whole = Counting(a)
    full = lanczos_quadrature(whole, start, steps)
    stop_at = data.draw(st.integers(1, whole.calls), label="stop_at")
    resumed, calls = _stopped_then_resumed(
        lambda mv, j: lanczos_quadrature(mv, start, steps, journal=j), a, stop_at)
    _same_density(resumed, full)
    assert calls == whole.calls - (stop_at - 1)  # only the steps not yet done


def _spectrum(n: int, distinct: int, seed: int) -> torch.Tensor:
    """A symmetric n x n matrix with ``distinct`` eigenvalues: its Krylov spaces stop growing
    at that size (an invariant subspace: the solver draws a fresh direction)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    values = torch.randn(distinct, generator=g, dtype=torch.float64)[torch.arange(n) % distinct]
    return q @ torch.diag(values) @ q.T


def _same_top(x, y) -> None:
    assert np.array_equal(x.eigenvalues, y.eigenvalues)
    assert np.array_equal(x.residuals, y.residuals)
    assert (x.num_hvp, x.converged) == (y.num_hvp, y.converged)
    assert torch.equal(x.eigenvectors, y.eigenvectors)
    assert (x.tridiagonal is None) == (y.tridiagonal is None)
    if x.tridiagonal is not None:
        assert np.array_equal(x.tridiagonal.alphas, y.tridiagonal.alphas)
        assert np.array_equal(x.tridiagonal.betas, y.tridiagonal.betas)


def _saved_hvp(journal) -> int:
    """The products a top-k solve's saved restart holds (0: none saved)."""
    state = journal.get("topk_restart")
    return 0 if state is None else state["num_hvp"]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(6, 40), seed=st.integers(0, 1000), warm=st.booleans(), data=st.data())
def test_a_top_k_solve_stopped_anywhere_goes_on_to_the_uninterrupted_result(n, seed, warm,
                                                                            data):
    """Stopped at any Hessian-vector product, once or several times (a small basis: many
    restarts; few distinct eigenvalues: invariant subspaces), the thick-restart solve goes
    on from its last restart and ends bit for bit where the uninterrupted one does."""
    a = _spectrum(n, data.draw(st.integers(2, n), label="distinct"), seed)
    k = data.draw(st.integers(1, min(4, n - 2)), label="k")
    ncv = data.draw(st.integers(k + 1, min(n, k + 6)), label="ncv")
    start = torch.linspace(-1, 2, n, dtype=torch.float64) if warm else None
    solve = lambda mv, j: lanczos_top_k(  # noqa: E731
        mv, n, k, ncv=ncv, tol=1e-10, seed=seed, max_iter=60 * ncv, start_vector=start,
        return_eigenvectors=True,
        journal=j)
    whole = Counting(a)
    with warnings.catch_warnings(), mock.patch.object(lanczos, "SAVE_OVERHEAD", math.inf):
        warnings.simplefilter("ignore", RuntimeWarning)  # max_iter reached: equal all the same
        full = solve(whole, None)
        stops = sorted(data.draw(st.lists(st.integers(1, whole.calls), min_size=1,
                                          max_size=3, unique=True), label="stops"))
        journal, done = MemoryJournal(), 0
        for stop in stops:  # each stop: the call number in the uninterrupted solve
            with pytest.raises(Preempted):
                solve(Counting(a, stop - done), journal)
            done = _saved_hvp(journal)
            assert done < stop
        again = Counting(a)
        _same_top(solve(again, journal), full)
    assert again.calls == whole.calls - done  # only the products after the restart
    if stops[-1] > ncv + 1 and whole.calls > stops[-1] + ncv:
        assert done > 0  # stopped after a restart: it was kept


def test_a_top_k_solve_saves_at_most_a_twentieth_of_its_time(monkeypatch):
    """A restart is saved only once the solve ran 20 times as long as the last save took:
    with a product taking 1 unit of time and a save 5, at least 100 products between saves."""
    a = _spectrum(30, 30, 4)
    clock, saves = [0.0], []

    class Slow(MemoryJournal):
        def put(self, key, state):
            saves.append(state["num_hvp"])
            clock[0] += 5
            super().put(key, state)

    class Timed(Counting):
        def __call__(self, v):
            clock[0] += 1
            return super().__call__(v)

    monkeypatch.setattr(lanczos.time, "perf_counter", lambda: clock[0])
    whole = Timed(a)
    lanczos_top_k(whole, 30, 3, ncv=5, tol=1e-12, seed=1, journal=Slow())  # 272 products
    assert len(saves) >= 3 and (np.diff(saves) >= 100).all()
    assert saves[0] == 5  # the first restart: nothing to go by yet


def test_a_top_k_solve_goes_on_across_processes_from_its_saved_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(lanczos, "SAVE_OVERHEAD", math.inf)
    a = _spectrum(30, 30, 4)
    solve = lambda mv, j, tol=1e-10: lanczos_top_k(  # noqa: E731
        mv, 30, 3, ncv=8, tol=tol, seed=1, return_eigenvectors=True, journal=j)
    whole = Counting(a)
    full = solve(whole, None)
    assert whole.calls > 20  # restarts: the first sweep is 8 products
    with pytest.raises(Preempted), FolderJournal(tmp_path / "a", every=3600) as journal:
        solve(Counting(a, stop_at=20), journal)
    saved = FolderJournal(tmp_path / "a").get("topk_restart")  # written on the way out
    assert 8 <= saved["num_hvp"] < 20
    again = Counting(a)
    _same_top(solve(again, FolderJournal(tmp_path / "a")), full)
    assert again.calls == whole.calls - saved["num_hvp"]

    with pytest.raises(Preempted):
        solve(Counting(a, stop_at=20), FolderJournal(tmp_path / "b", every=0))
    (tmp_path / "b" / "topk_restart.pt").write_bytes(b"truncated")  # unreadable: start again
    again = Counting(a)
    _same_top(solve(again, FolderJournal(tmp_path / "b")), full)
    assert again.calls == whole.calls

    with pytest.raises(Preempted):  # another solve's progress (other settings) is not used
        solve(Counting(a, stop_at=20), FolderJournal(tmp_path / "c", every=0))
    other, again = Counting(a), Counting(a)
    solve(other, None, tol=1e-9)
    solve(again, FolderJournal(tmp_path / "c"), tol=1e-9)
    assert again.calls == other.calls


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), reuse=st.booleans(), data=st.data())
def test_slq_goes_on_after_its_finished_runs(seed, reuse, data):
    n, runs, steps = 24, 4, 6
    a = _matrix(n, seed)
    tri = None
    if reuse:
        tri = lanczos_top_k(lambda v: a @ v, n, 2, ncv=steps, seed=seed).tridiagonal
    whole = Counting(a)
    full = slq_density(whole, n, n_runs=runs, n_iter=steps, seed=seed, reuse=tri)
    stop_at = data.draw(st.integers(1, whole.calls), label="stop_at")
    resumed, calls = _stopped_then_resumed(
        lambda mv, j: slq_density(mv, n, n_runs=runs, n_iter=steps, seed=seed, reuse=tri,
                                  journal=j), a, stop_at)
    _same_density(resumed, full)
    assert calls == whole.calls - (stop_at - 1) // steps * steps  # whole runs were kept


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), stop_at=st.integers(1, 9))
def test_hutchinson_goes_on_after_its_samples(seed, stop_at):
    a = _matrix(16, seed)
    full = hutchinson_trace(Counting(a), 16, n_samples=9, seed=seed)
    resumed, calls = _stopped_then_resumed(
        lambda mv, j: hutchinson_trace(mv, 16, n_samples=9, seed=seed, journal=j), a, stop_at)
    assert resumed == full and calls == 9 - (stop_at - 1)


def test_a_saved_state_of_another_computation_is_not_used():
    a, start = _matrix(20, 3), torch.ones(20, dtype=torch.float64)
    journal = MemoryJournal()
    lanczos_quadrature(Counting(a), start, 8, journal=journal)
    for args, kwargs in (((start, 12), {}), ((2 * start + torch.arange(20.0), 8), {})):
        whole = Counting(a)
        full = lanczos_quadrature(whole, *args)
        again = Counting(a)
        _same_density(lanczos_quadrature(again, *args, journal=journal), full)
        assert again.calls == whole.calls  # computed, not read
    hutchinson_trace(Counting(a), 20, n_samples=5, seed=1, journal=journal)
    again = Counting(a)
    assert (hutchinson_trace(again, 20, n_samples=5, seed=2, journal=journal)
            == hutchinson_trace(Counting(a), 20, n_samples=5, seed=2)) and again.calls == 5


def _operator():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    return HessianOperator(model, torch.nn.functional.cross_entropy, [(x, y)])


@pytest.mark.parametrize("backend", ["lanczos", "scipy"])
def test_a_finished_top_k_is_read_back_not_solved_again(backend):
    op = _operator()
    journal = MemoryJournal()
    first = top_eigenvalues(op, 3, backend=backend, tol=1e-8, return_eigenvectors=True,
                            journal=journal)
    used = op.num_hvp
    again = top_eigenvalues(op, 3, backend=backend, tol=1e-8, return_eigenvectors=True,
                            journal=journal)
    assert op.num_hvp == used  # read back
    assert np.array_equal(again.eigenvalues, first.eigenvalues)
    assert np.array_equal(again.residuals, first.residuals, equal_nan=True)
    assert torch.equal(again.eigenvectors, first.eigenvectors)
    assert (again.num_hvp, again.converged, again.backend) == (first.num_hvp, first.converged,
                                                               first.backend)
    if first.tridiagonal is not None:
        assert np.array_equal(again.tridiagonal.alphas, first.tridiagonal.alphas)
    top_eigenvalues(op, 3, backend=backend, tol=1e-6, journal=journal)
    assert op.num_hvp > used  # other settings: solved


def test_the_folder_journal_writes_in_put_order_every_interval(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(scratch, "save_checkpoint",
                        lambda path, state: written.append(path.name))
    journal = FolderJournal(tmp_path, every=3600)
    journal.put("state", {"j": 1})
    journal.put("v1", {"v": torch.zeros(2)})
    journal.put("state", {"j": 2})  # moves after v1
    assert written == [] and journal.get("state") == {"j": 2}
    journal.flush()
    assert written == ["v1.pt", "state.pt"] and (tmp_path / SECONDS).exists()


def test_a_folder_journal_counts_the_computing_time_of_the_work_it_kept(tmp_path,
                                                                       monkeypatch):
    """The time after the last put is not counted: that work is done again."""
    clock = [100.0]
    monkeypatch.setattr(scratch.time, "perf_counter", lambda: clock[0])
    journal = FolderJournal(tmp_path, every=3600)
    clock[0] += 30
    journal.put("a", {"x": 1})
    clock[0] += 50  # computing that is lost if the unit stops now
    journal.flush()
    assert json.loads((tmp_path / SECONDS).read_text())["seconds"] == 30
    again = FolderJournal(tmp_path, every=3600)  # the next attempt
    assert again.earlier == 30
    clock[0] += 5
    again.put("b", {"x": 2})
    again.flush()
    assert json.loads((tmp_path / SECONDS).read_text())["seconds"] == 35


def test_a_folder_journal_goes_on_across_processes_and_ignores_a_damaged_file(tmp_path):
    a, start = _matrix(20, 5), torch.ones(20, dtype=torch.float64)
    full = lanczos_quadrature(Counting(a), start, 10)
    run = lambda mv, j: lanczos_quadrature(mv, start, 10, journal=j)  # noqa: E731
    with pytest.raises(Preempted):
        run(Counting(a, stop_at=7), FolderJournal(tmp_path, every=0))
    assert sorted(p.name for p in tmp_path.glob("lanczos_v*.pt")) == [
        f"lanczos_v{i}.pt" for i in range(1, 7)]
    again = Counting(a)
    _same_density(run(again, FolderJournal(tmp_path, every=0)), full)
    assert again.calls == 4
    (tmp_path / "lanczos_v3.pt").write_bytes(b"truncated")  # a vector lost: start again
    again = Counting(a)
    _same_density(run(again, FolderJournal(tmp_path, every=0)), full)
    assert again.calls == 10


def _cfg(root, *extra):
    [cfg] = expand_grid(["model=small_cnn", "model.width=0.5", "data=digits", "train.epochs=1",
                         "data.train_subset=64", "data.test_subset=32", "device=cpu",
                         "num_threads=1", "progress=false", f"results_root={root}",
                         "hessian.enabled=true", "hessian.checkpoints=[final]",
                         "hessian.n_samples=64", "hessian.batch_size=32", *extra])
    return cfg


DEFAULT = ["hessian.k=4", "hessian.density_runs=2", "hessian.density_iter=9",
           "hessian.trace_samples=6"]


@pytest.mark.parametrize("protocol,stop,left", [
    (DEFAULT, lambda total: total - 2, lambda total: 3),
    # two products after the top-k solve's first restart (its basis: 20 vectors)
    (DEFAULT, lambda total: 22, lambda total: total - 20),
    (["hessian=paper", "hessian.checkpoints=[final]", "hessian.n_samples=60",
      "hessian.batch_size=10", "hessian.density_iter=12"],
     lambda total: total - 2, lambda total: 3),
], ids=["default", "default-top-k", "paper"])
def test_a_stopped_hessian_unit_goes_on_to_the_uninterrupted_rows(tmp_path, monkeypatch,
                                                                  protocol, stop, left):
    """Stopped by an exception (submitit's requeue) two products before the end, or in the
    middle of the top-k solve: the progress not yet written (the journal writes every minute)
    is written on the way out, and the rerun spends only the products left."""
    hvp = HessianOperator.__call__
    counts = []

    def stop_at(n):
        def call(self, v):
            counts.append(1)
            if len(counts) == n:
                raise Preempted
            return hvp(self, v)
        return call

    monkeypatch.setattr(HessianOperator, "__call__", stop_at(0))
    pipeline.run(_cfg(tmp_path / "full", *protocol))
    total, counts[:] = len(counts), []
    stopped = _cfg(tmp_path / "stopped", *protocol)
    monkeypatch.setattr(HessianOperator, "__call__", stop_at(stop(total)))
    with pytest.raises(Preempted):
        pipeline.run(stopped)
    ident = identify(stopped)
    checkpoints = results.run_paths(tmp_path / "stopped", ident.cell_name, 0).checkpoints
    [work] = (checkpoints / "hessian").iterdir()
    assert (work / START).exists() and len(list(work.glob("*.pt"))) > 0

    counts.clear()
    monkeypatch.setattr(HessianOperator, "__call__", stop_at(0))
    pipeline.run(stopped)
    assert len(counts) == left(total)  # the products not yet done when it stopped
    a, b = results.load(tmp_path / "full"), results.load(tmp_path / "stopped")
    cols = ["unit", "metric", "index", "value", "note"]
    rows = [df.loc[df["stage"].str.startswith("hessian")
                   & (df["metric"] != "hessian_seconds"), cols]
            .sort_values(cols[:3]).reset_index(drop=True) for df in (a, b)]
    assert len(rows[0]) > 10 and rows[0].equals(rows[1])
    assert not (checkpoints / "hessian").exists()  # removed once the unit returned


def test_a_stopped_probes_unit_fits_only_the_layers_it_had_not(tmp_path, monkeypatch):
    """Stopped (an exception) while fitting its third layer's probe: the rerun fits the layers
    from the third on and writes the uninterrupted unit's rows."""
    from landscape.probes import probes as probes_module

    fit = probes_module.probe_accuracy
    calls = []

    def stop_at(n):
        def probe(*args, **kwargs):
            calls.append(kwargs["layer"])
            if len(calls) == n:
                raise Preempted
            return fit(*args, **kwargs)
        return probe

    extra = ["hessian.enabled=false", "probes.enabled=true", "probes.n_train=48",
             "probes.n_test=32"]
    monkeypatch.setattr(probes_module, "probe_accuracy", stop_at(0))
    pipeline.run(_cfg(tmp_path / "full", *extra))
    layers, calls[:] = list(calls), []
    assert len(layers) >= 4
    stopped = _cfg(tmp_path / "stopped", *extra)
    monkeypatch.setattr(probes_module, "probe_accuracy", stop_at(3))
    with pytest.raises(Preempted):
        pipeline.run(stopped)
    calls.clear()
    monkeypatch.setattr(probes_module, "probe_accuracy", stop_at(0))
    pipeline.run(stopped)
    assert calls == layers[2:]  # the first two were kept
    a, b = results.load(tmp_path / "full"), results.load(tmp_path / "stopped")
    cols = ["unit", "metric", "layer", "index", "value", "note"]
    rows = [df.loc[df["stage"] == "probes_final", cols].sort_values(cols[:4])
            .reset_index(drop=True) for df in (a, b)]
    assert len(rows[0]) > 10 and rows[0].equals(rows[1])
    checkpoints = results.run_paths(tmp_path / "stopped", identify(stopped).cell_name,
                                    0).checkpoints
    assert not (checkpoints / "probes").exists()
