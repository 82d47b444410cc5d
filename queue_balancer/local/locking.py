"""An exclusive lock on a file, waited for with a deadline: one ``up``/``down`` per cluster directory, one
build of the RabbitMQ 4 root file system per machine."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

from queue_balancer.local.layout import LocalClusterError


@contextlib.contextmanager
def exclusive_lock(path: Path, *, wait: float, holder: str) -> Iterator[None]:
    """Hold ``flock(path)`` for the block; fail after ``wait`` seconds naming what ``holder`` is doing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LocalClusterError(
                        f"{holder} has held {path} for {wait:.0f} s; wait for it to finish"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
