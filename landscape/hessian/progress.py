"""tqdm progress bars, silent when disabled or when the ``CI`` environment variable is set."""

from __future__ import annotations

from tqdm import tqdm

from landscape.device import progress_enabled


def progress_bar(*, total: int | None, enabled: bool, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not progress_enabled(enabled), leave=False)
