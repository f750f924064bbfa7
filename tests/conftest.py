import os

import pytest
import torch
from hypothesis import settings

# Property tests draw new examples on every run where they are written (and found a printing
# bug that way); under CI (.ci/run exports it) they draw the same ones each time, so a landing
# is decided by the code, not by which examples a run happened to draw.
settings.register_profile("ci", derandomize=True, print_blob=True)
if "CI" in os.environ:
    settings.load_profile("ci")
os.environ.setdefault("CI", "1")  # no progress bars in tests
# Tests use tiny models, for which one thread is as fast as two, and several test processes
# (subprocess tests, xdist workers) must not oversubscribe OpenMP threads.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


# The longest tests (minutes each on this machine) start first, so that with pytest-xdist the
# two workers do not end with one of them running a long test alone.
SLOW_FIRST = (
    "tests/test_readme.py::test_every_readme_command_runs",
    "tests/test_paper_protocol.py::test_experiment_paper_small_runs_end_to_end",
    "tests/test_slurm.py::test_grid_array_and_dependent_cell_job_then_resubmission_submits_nothing",
    "tests/test_slurm.py::test_preempted_task_is_requeued_and_resumes_from_its_checkpoint",
    "tests/test_dynamics.py::"
    "test_experiment_dynamics_small_runs_end_to_end_and_draws_the_trajectories",
    "tests/test_paper_protocol.py::test_paper_cifar10_dry_run_lists_every_stage_of_every_run",
    "tests/test_geometry.py::test_pruned_network_geometry_in_the_prune_and_finetune_units",
)


def pytest_collection_modifyitems(config, items):
    rank = {nodeid: i for i, nodeid in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))  # stable: the rest keep order


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def console(monkeypatch, tmp_path, capsys):
    """``console(main, *args)``: the console script ``landscape.cli.<main>`` run in this process
    (a fresh interpreter costs seconds of imports) in ``tmp_path``, as ``(exit code, stdout,
    stderr)``. Hydra's global state and the root logger (Hydra's job logging adds a handler on
    the captured stdout) are restored after each call."""
    import logging
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from landscape import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI", "1")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def call(main: str, *args: str) -> tuple[int, str, str]:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        monkeypatch.setattr(sys, "argv", [main, *args])
        code = 0
        try:
            getattr(cli, main)()
        except SystemExit as e:
            code = e.code
        finally:
            GlobalHydra.instance().clear()
            root.handlers[:] = handlers
            root.setLevel(level)
        out = capsys.readouterr()
        return code, out.out, out.err

    return call
