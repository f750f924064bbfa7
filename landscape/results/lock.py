"""Per-unit locks: one process computes a stage unit at a time.

The lock of a unit is an exclusive ``fcntl.lockf`` lock on ``stages/<unit>/LOCK`` (POSIX
record locks, also honoured over NFS), whose content names the holder's host, pid and start
time for the message a second process prints. The kernel drops the lock when its holder dies,
however it dies (SIGKILL included), so a stale lock cannot block anyone: a LOCK file nobody
holds is simply taken. Released locks remove their file.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Union

from landscape.results.layout import stage_dir

LOCK = "LOCK"


class UnitLock:
    """A held lock; :meth:`release` (or leaving the ``with`` block) drops it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd < 0:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: no one can lock this inode later
        os.close(self._fd)  # closing drops the lock
        self._fd = -1

    def __enter__(self) -> UnitLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"]))
        return f"pid {h['pid']} on {h['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # it is writing its name right now


def try_lock(run_dir: Path, unit: str) -> Union[UnitLock, str]:
    """Take the lock of ``unit`` without waiting: a :class:`UnitLock`, or (when a live process
    holds it) a description of the holder."""
    path = stage_dir(run_dir, unit) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return f"{_holder(path)} (lock {path})"
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released and removed between our open and our lock: try again
            os.close(fd)
            continue
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        return UnitLock(path, fd)
    return f"another process (lock {path})"
