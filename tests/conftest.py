import os

import pytest
import torch

os.environ.setdefault("CI", "1")  # no progress bars in tests


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
