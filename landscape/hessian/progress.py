"""tqdm progress bars, silent when disabled or when the ``CI`` environment variable is set."""

from __future__ import annotations

import os

from tqdm import tqdm


def progress_bar(*, total: int | None, enabled: bool, desc: str) -> tqdm:
    quiet = not enabled or bool(os.environ.get("CI"))
    return tqdm(total=total, desc=desc, disable=quiet, leave=False)
