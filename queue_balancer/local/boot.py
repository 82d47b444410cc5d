"""Observing nodes while they boot: has the cluster formed, may the next node start, why did one die.

Every wait is on an observed condition with a deadline (a process alive, the management API listing the
nodes as running, a line in the node's log), never a bare sleep.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import requests

from queue_balancer.local.layout import LocalClusterError, LocalNode

Progress = Callable[[str], None]
NodesView = set[str] | str | None

_LOG_ERROR = re.compile(r"\[error\] <[^>]*> (\S.*)")
# A restarted node that did not stop last waits for a peer's tables; from this line on it has checked
# its feature flags against the cluster, so the next node may start (3.10 and 4.0 log the same words).
_WAITING_FOR_PEERS = "Waiting for Mnesia tables"
QUIET_SECONDS = 10.0
"""A booting node whose log stays this long unchanged is asked whether Mnesia's start waits for a peer."""

BootState = Literal["running", "waiting for tables", "waiting in mnesia start"]


def nodes_view(node: LocalNode, auth: tuple[str, str]) -> NodesView:
    """Names of the running cluster members as ``node`` reports them; None if it does not answer yet.

    "unauthorized" when the management API answers but rejects ``auth``.
    """
    try:
        response = requests.get(
            f"{node.management_url}/api/nodes", auth=auth, timeout=3, params={"columns": "name,running"}
        )
    except requests.RequestException:
        return None
    if response.status_code == 401:
        return "unauthorized"
    if response.status_code != 200:
        return None
    try:
        return {str(n["name"]) for n in response.json() if n.get("running")}
    except (ValueError, TypeError, KeyError):
        return None


def log_size(path: Path) -> int:
    """Bytes in ``path`` now (0 when missing): where to start reading what a new boot logs."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def await_started_or_waiting(
    node: LocalNode,
    wrapper: subprocess.Popen[bytes],
    *,
    auth: tuple[str, str],
    log: Path,
    log_offset: int,
    deadline: float,
    failure_hint: Callable[[], str],
    waits_for_decision: Callable[[float], bool],
    quiet_seconds: float = QUIET_SECONDS,
) -> BootState:
    """Wait until a restarted node serves its API, or waits for its peers, which may then start.

    Nodes of a cluster that stopped together, started at once, can fail their checks against a peer that
    is itself half-way through booting (RabbitMQ 3.10: ``incompatible_feature_flags``, ``badmap``); one at
    a time, each waiting for its peers or running before the next starts, they do not.

    A node waits for its peers in one of two ways. It logs that it waits for their tables. Or, after a
    crash of every node, it waits silently inside Mnesia's own start for a peer that knows the outcome of
    a transaction the crash cut in two (Mnesia's ``max_wait_for_decision`` is infinity): its log
    stays still, and ``waits_for_decision(timeout)`` (Mnesia's recovery process is waiting, asked on the
    node within ``timeout`` seconds) says so. It is asked only once the node logs (its log handlers are
    up) and its log then stayed still for ``quiet_seconds``: asking costs a CLI call.
    """
    quiet_since, seen_size = time.monotonic(), log_size(log)
    while True:
        if wrapper.poll() is not None:
            raise LocalClusterError(
                f"{node.name} stopped while starting (exit code {wrapper.returncode}): {failure_hint()}"
            )
        view = nodes_view(node, auth)
        if view == "unauthorized" or (isinstance(view, set) and node.name in view):
            return "running"
        with contextlib.suppress(OSError), open(log, "rb") as handle:
            handle.seek(log_offset)
            if _WAITING_FOR_PEERS.encode() in handle.read():
                return "waiting for tables"
        if (size := log_size(log)) != seen_size:
            quiet_since, seen_size = time.monotonic(), size
        elif size > log_offset and time.monotonic() - quiet_since >= quiet_seconds:
            left = deadline - time.monotonic()
            if left > 1.0 and waits_for_decision(min(20.0, left)):
                return "waiting in mnesia start"
            quiet_since = time.monotonic()  # a slow boot step: ask again after another still spell
        if time.monotonic() > deadline:
            raise LocalClusterError(f"{node.name} did not get past its boot checks in time: {failure_hint()}")
        time.sleep(0.2)


def await_cluster(
    nodes: Sequence[LocalNode],
    wrappers: Mapping[str, subprocess.Popen[bytes]],
    *,
    auth: tuple[str, str],
    deadline: float,
    progress: Progress,
    repair_admin: Callable[[LocalNode], None],
    failure_hint: Callable[[LocalNode], str],
    logs_hint: str,
) -> None:
    """Wait until every node's management API lists every node of ``nodes`` as running."""
    expected = {n.name for n in nodes}
    ready: set[str] = set()
    seen: dict[str, str] = {}
    t0 = time.monotonic()
    repaired = False
    by_name = {n.name: n for n in nodes}
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        while True:
            for name, wrapper in wrappers.items():
                if name not in ready and wrapper.poll() is not None:
                    raise LocalClusterError(
                        f"{name} stopped while starting (exit code {wrapper.returncode}): "
                        f"{failure_hint(by_name[name])}"
                    )
            pending = [n for n in nodes if n.name not in ready]
            for node, answer in zip(pending, pool.map(lambda n: nodes_view(n, auth), pending), strict=True):
                if answer == "unauthorized":
                    # Management answers but rejects our user: a cluster created with other
                    # credentials. Repair once through the CLI, which needs only the cookie.
                    if not repaired:
                        progress(f"setting the password of user {auth[0]!r}")
                        repair_admin(node)
                        repaired = True
                    continue
                if isinstance(answer, set):
                    seen[node.name] = ", ".join(sorted(answer)) or "none"
                    if answer >= expected:
                        ready.add(node.name)
                        if wrappers:
                            progress(
                                f"{node.name} is running, cluster of {len(expected)} node(s) formed "
                                f"({time.monotonic() - t0:.1f} s)"
                            )
            if len(ready) == len(nodes):
                return
            if time.monotonic() > deadline:
                states = "; ".join(
                    f"{n.name} sees running: {seen[n.name]}"
                    if n.name in seen
                    else f"{n.name}'s management API does not answer"
                    for n in nodes
                    if n.name not in ready
                )
                raise LocalClusterError(f"the local cluster did not come up in time ({states}); {logs_hint}")
            time.sleep(0.5)


def failure_hint(node_dir: Path, node: LocalNode) -> str:
    """The most telling line a dead node left, and where the full story is."""
    for path in (node_dir / "stdout.log", node_dir / "log" / f"{node.name}.log"):
        with contextlib.suppress(OSError):
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
            startup = [line for line in lines if line.startswith("Error during startup")]
            # The first error with a message says why; later ones are the supervisor's crash reports.
            errors = [m.group(1) for m in map(_LOG_ERROR.search, lines) if m]
            best = startup or errors or lines[-1:]
            if best:
                return f"{best[0][:300]} (full log: {path})"
    return f"no log output (see {node_dir})"
