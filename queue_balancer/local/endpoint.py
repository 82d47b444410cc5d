"""The local AWS endpoint as a detached process, next to the local cluster (`local up` / `local down`).

The endpoint itself is ``queue_balancer.local.provisioning.LocalEndpoint`` (moto's server, patched by
``queue_balancer.local.aws_emulation``, provisioned like the BalancerStack). This module runs it
detached: ``start_endpoint``/``stop_endpoint`` manage the process (pid file, log and outputs in the
cluster's base directory), ``serve`` is what the process runs (``python -m queue_balancer.local.endpoint
serve``). The names tests and the CLI use are re-exported here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from queue_balancer.local.cluster import LocalClusterConfig
from queue_balancer.local.provisioning import (
    CLUSTER_NAME,
    DEFAULT_PORT,
    NAME,
    SSM_TAG_KEY,
    LocalEndpoint,
    LocalEndpointError,
    Outputs,
    running,
)

ENDPOINT_FILE = "endpoint.json"
PID_FILE = "endpoint.pid"
LOG_FILE = "endpoint.log"
ENV_CREDENTIALS = "QUEUE_BALANCER_ENDPOINT_CREDENTIALS"

__all__ = [
    "CLUSTER_NAME",
    "DEFAULT_PORT",
    "ENDPOINT_FILE",
    "LOG_FILE",
    "NAME",
    "PID_FILE",
    "SSM_TAG_KEY",
    "LocalEndpoint",
    "LocalEndpointError",
    "Outputs",
    "endpoint_url",
    "local_outputs",
    "running",
    "start_endpoint",
    "stop_endpoint",
]


def start_endpoint(
    base_dir: Path, port: int, cluster_config: LocalClusterConfig, *, timeout: float = 60.0
) -> Outputs:
    """Start the endpoint as a detached process next to the cluster in ``base_dir``; idempotent.

    Returns the outputs once the endpoint answers and is provisioned. The admin credentials reach the
    child through its environment, never its command line.
    """
    base_dir = Path(base_dir).expanduser().absolute()
    base_dir.mkdir(parents=True, exist_ok=True)
    running = _running_pid(base_dir)
    if running is not None:
        return local_outputs(base_dir)
    (base_dir / ENDPOINT_FILE).unlink(missing_ok=True)
    env = dict(os.environ)
    env[ENV_CREDENTIALS] = json.dumps(
        {"user": cluster_config.user, "password": cluster_config.password, "layout": cluster_config.layout()}
    )
    project = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(base_dir / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "queue_balancer.local.endpoint",
                "serve",
                "--base-dir",
                str(base_dir),
                "--port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=project,
            start_new_session=True,
            close_fds=True,
        )
    (base_dir / PID_FILE).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while True:
        outputs = _read_outputs(base_dir)
        if outputs is not None:
            return outputs
        if process.poll() is not None:
            (base_dir / PID_FILE).unlink(missing_ok=True)
            raise LocalEndpointError(
                f"the local AWS endpoint exited with code {process.returncode} at start:\n{_log_tail(base_dir)}"
            )
        if time.monotonic() > deadline:
            stop_endpoint(base_dir)
            raise LocalEndpointError(
                f"the local AWS endpoint did not come up within {timeout:g} s:\n{_log_tail(base_dir)}"
            )
        time.sleep(0.1)


def stop_endpoint(base_dir: Path, *, timeout: float = 15.0) -> bool:
    """Stop the endpoint started from ``base_dir`` (and nothing else); True if one was running."""
    base_dir = Path(base_dir).expanduser().absolute()
    pid = _running_pid(base_dir)  # ownership is checked once, before any signal
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _await_exit(pid, time.monotonic() + timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _await_exit(pid, time.monotonic() + 5)
    for name in (PID_FILE, ENDPOINT_FILE):
        (base_dir / name).unlink(missing_ok=True)
    return pid is not None


def _await_exit(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` is gone (reaping it if it is our child); False at the deadline."""
    while True:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True  # exited; someone else's child, left for its parent to reap
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def local_outputs(base_dir: Path) -> Outputs:
    """The outputs of the endpoint running for ``base_dir``; an error saying how to start one otherwise."""
    base_dir = Path(base_dir).expanduser().absolute()
    outputs = _read_outputs(base_dir) if _running_pid(base_dir) is not None else None
    if outputs is None:
        raise LocalEndpointError(
            f"no local AWS endpoint is running for {base_dir}: start it with `queue-balancer local up`"
        )
    return outputs


def endpoint_url(base_dir: Path) -> str:
    """URL of the endpoint running for ``base_dir`` (what ``--local`` commands talk to)."""
    return local_outputs(base_dir).EndpointUrl


def _read_outputs(base_dir: Path) -> Outputs | None:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return Outputs.from_dict(json.loads((base_dir / ENDPOINT_FILE).read_text()))
    return None


def _running_pid(base_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int((base_dir / PID_FILE).read_text().strip())
        if _owned(pid, base_dir):
            return pid
    return None


def _owned(pid: int, base_dir: Path) -> bool:
    """Alive, not a zombie, and our endpoint for this base_dir (a recycled pid is never signalled)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode(errors="replace").split("\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and "queue_balancer.local.endpoint" in words and str(base_dir) in words


def _log_tail(base_dir: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join((base_dir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def serve(base_dir: Path, port: int) -> None:
    """The detached process: run the endpoint until SIGTERM, with its outputs in ``endpoint.json``."""
    raw = json.loads(os.environ.pop(ENV_CREDENTIALS, "{}"))
    config = LocalClusterConfig(
        base_dir=base_dir,
        user=raw.get("user", "admin"),
        password=raw.get("password", "admin"),
        **raw.get("layout", {}),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LocalEndpoint(port, config) as endpoint:
        assert endpoint.outputs is not None
        target = base_dir / ENDPOINT_FILE
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(endpoint.outputs.to_dict(), indent=2) + "\n")
        partial.replace(target)
        print(f"local AWS endpoint on {endpoint.url} (pid {os.getpid()})", flush=True)
        stop.wait()
    (base_dir / ENDPOINT_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m queue_balancer.local.endpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the endpoint in the foreground (what `local up` starts)")
    run.add_argument("--base-dir", type=Path, required=True)
    run.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    serve(args.base_dir.expanduser().absolute(), args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
