import os

import pytest
import torch

os.environ.setdefault("CI", "1")  # no progress bars in tests
# Tests use tiny models, for which one thread is as fast as two, and several test processes
# (subprocess tests, xdist workers) must not oversubscribe OpenMP threads.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


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
