"""A Hessian computation stopped on the way (a preempted job) goes on from its saved progress
(``journal=``, landscape.journal) to the uninterrupted result, bit for bit, spending
only the Hessian-vector products it had not done; in the pipeline, a Hessian unit goes on from
its scratch folder (landscape.stages.scratch.FolderJournal), and a probes unit fits only the
layers it had not."""

from __future__ import annotations

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


@pytest.mark.parametrize("protocol", [
    ["hessian.k=4", "hessian.density_runs=2", "hessian.density_iter=9",
     "hessian.trace_samples=6"],
    ["hessian=paper", "hessian.checkpoints=[final]", "hessian.n_samples=60",
     "hessian.batch_size=10", "hessian.density_iter=12"],
], ids=["default", "paper"])
def test_a_stopped_hessian_unit_goes_on_to_the_uninterrupted_rows(tmp_path, monkeypatch,
                                                                  protocol):
    """Stopped by an exception (submitit's requeue) two products before the end: the progress
    not yet written (the journal writes every minute) is written on the way out."""
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
    monkeypatch.setattr(HessianOperator, "__call__", stop_at(total - 2))  # near the end
    with pytest.raises(Preempted):
        pipeline.run(stopped)
    ident = identify(stopped)
    checkpoints = results.run_paths(tmp_path / "stopped", ident.cell_name, 0).checkpoints
    [work] = (checkpoints / "hessian").iterdir()
    assert (work / START).exists() and len(list(work.glob("*.pt"))) > 0

    counts.clear()
    monkeypatch.setattr(HessianOperator, "__call__", stop_at(0))
    pipeline.run(stopped)
    assert len(counts) == 3  # the products not yet done when it stopped
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
