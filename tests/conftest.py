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
