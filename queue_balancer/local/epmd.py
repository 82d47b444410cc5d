"""The local cluster's own epmd: on 127.0.0.1 and a private port, so no node ever starts one on 0.0.0.0:4369."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from queue_balancer.local.layout import LocalClusterError
from queue_balancer.local.procfs import port_accepts, port_in_use, wait_pid_exit

PID_FILE = "epmd.pid"


def find_epmd() -> str:
    """Path of an epmd binary (PATH first, then Debian's erts directories)."""
    for candidate in [
        shutil.which("epmd"),
        *sorted(map(str, Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))),
    ]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise LocalClusterError(
        "epmd was not found: apt-get install erlang-base (a dependency of rabbitmq-server)"
    )


def start_epmd(
    base_dir: Path, port: int, env: dict[str, str], progress: Callable[[str], None]
) -> subprocess.Popen[bytes]:
    """Start epmd on 127.0.0.1:``port`` (cwd ``base_dir``, which marks it as ours) and wait until it listens."""
    owner = port_in_use(port)
    if owner is not None:
        raise LocalClusterError(f"epmd port {port} on 127.0.0.1 is already in use{owner}")
    epmd = find_epmd()
    progress(f"starting epmd on 127.0.0.1:{port}")
    with open(base_dir / "epmd.log", "ab") as log:
        process = subprocess.Popen(
            [epmd, "-port", str(port), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=base_dir,  # part of how `down` recognises it as ours
            start_new_session=True,  # outlives the CLI and ignores its Ctrl-C
            close_fds=True,
        )
    (base_dir / PID_FILE).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + 10
    while not port_accepts(port):
        if process.poll() is not None:
            raise LocalClusterError(
                f"epmd exited with code {process.returncode} at start; see {base_dir / 'epmd.log'}"
            )
        if time.monotonic() > deadline:
            raise LocalClusterError(f"epmd did not listen on 127.0.0.1:{port} within 10 s")
        time.sleep(0.05)
    return process


def stop_epmd(base_dir: Path, pid: int | None) -> None:
    """Stop our epmd (``pid`` as checked by the caller's ownership test) and forget its pid file."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        wait_pid_exit(pid, time.monotonic() + 10)
    (base_dir / PID_FILE).unlink(missing_ok=True)
