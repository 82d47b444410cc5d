"""A real RabbitMQ cluster on loopback, started from Debian's ``rabbitmq-server`` without touching the system.

Why this exists: the balancer must be exercised against real leaders, mirrors and Raft groups, and a
developer's machine (or CI container) has no systemd and often another RabbitMQ already. So every node here
gets its own name, ports, Erlang cookie, data and log directories under one ``base_dir``; its own ``epmd``
listens on 127.0.0.1 on a private port; nothing binds the default ports (4369, 5672, 15672, 25672) or any
non-loopback address. The binaries in ``/usr/lib/rabbitmq/bin`` are run as the current user (the
``/usr/sbin`` wrappers would switch to the ``rabbitmq`` user and its system-wide cookie).

This module is the life cycle (up, down, status, one node's stop/kill/start); the layout, the process
inspection, epmd, the node files, the CLI wrapper and the boot observations live in their own modules.

Layout of ``base_dir``::

    cluster.json            the layout ``up`` started (node count, ports, prefix), for ``status``/``down``
    home/.erlang.cookie     this cluster's cookie (mode 0400); HOME of every node and CLI call
    epmd.pid, epmd.log      the private epmd
    qb1/                    one directory per node: rabbitmq.conf, enabled_plugins, data/, log/,
                            node.pid (the Erlang VM), wrapper.pid (the rabbitmq-server script), stdout.log
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from queue_balancer.local import boot
from queue_balancer.local.admin_user import ensure_admin_user, repair_admin_user
from queue_balancer.local.environment import base_env
from queue_balancer.local.epmd import start_epmd, stop_epmd
from queue_balancer.local.layout import (
    ENV_BASE_DIR,
    LAYOUT_FILE,
    LocalClusterConfig,
    LocalClusterError,
    LocalNode,
    NodeStatus,
    default_base_dir,
    describe_layout,
)
from queue_balancer.local.locking import exclusive_lock
from queue_balancer.local.node_config import has_booted_before, node_dir, node_env, node_log, write_node_files
from queue_balancer.local.procfs import UNKNOWN_OWNER, owned_pid, port_in_use, rss_bytes, wait_pid_exit
from queue_balancer.local.rabbitmq_cli import RABBITMQ_BIN, RABBITMQ_SERVER, RabbitmqCli, require_rabbitmq
from queue_balancer.local.rootfs import ensure_rootfs, rootfs_dir
from queue_balancer.local.runtime import Runtime

__all__ = [
    "ENV_BASE_DIR",
    "RABBITMQ_BIN",
    "RABBITMQ_SERVER",
    "LocalCluster",
    "LocalClusterConfig",
    "LocalClusterError",
    "LocalNode",
    "NodeStatus",
    "default_base_dir",
]

Progress = Callable[[str], None]
_PID_FILES = ("node.pid", "wrapper.pid")
# mnesia_recover's state is #state{supervisor, unclear_pid, ...} (OTP 25 to 27): unclear_pid is set while it
# waits for a peer's decision on a transaction, and only then. The process answers sys calls meanwhile.
_WAITS_FOR_DECISION = (
    "case catch sys:get_state(mnesia_recover, 5000) of "
    "S when is_tuple(S), element(1, S) =:= state, element(3, S) =/= undefined -> waiting; "
    "_ -> no end"
)


def _quiet(_: str) -> None:
    """The default progress callback: say nothing."""


class LocalCluster:
    """Start, observe and stop the local cluster described by a ``LocalClusterConfig``."""

    def __init__(self, config: LocalClusterConfig) -> None:
        self.config = config
        self.nodes: list[LocalNode] = config.all_nodes()
        self.base_dir = config.base_dir.expanduser().absolute()
        self.home = self.base_dir / "home"
        self.runtime = Runtime(config.rabbitmq, rootfs_dir() if config.rabbitmq == "4" else None)
        self._cli = RabbitmqCli(
            base_dir=self.base_dir,
            home=self.home,
            epmd_port=config.epmd_port,
            password=config.password,
            runtime=self.runtime,
        )
        # Processes this object started (epmd, node wrappers): polled so they never linger as zombies.
        self._children: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"LocalCluster({self.base_dir}, nodes={[n.name for n in self.nodes]})"

    # ---- public API ------------------------------------------------------------------------------

    @property
    def credentials(self) -> tuple[str, str]:
        """(user, password) of the administrator ``up`` creates."""
        return (self.config.user, self.config.password)

    def node(self, index: int) -> LocalNode:
        """Node ``index`` (1-based), with an error that names the valid range."""
        if not 1 <= index <= len(self.nodes):
            raise LocalClusterError(f"there is no node {index}: this cluster has nodes 1..{len(self.nodes)}")
        return self.nodes[index - 1]

    def up(self, progress: Progress = _quiet, *, timeout: float = 240.0) -> None:
        """Start what is missing and return once every node runs, is clustered and serves the API.

        Idempotent: running nodes are left alone. Nodes that never booted start all at once and form
        the cluster through classic-config peer discovery; nodes with data from an earlier boot start
        one at a time (see ``_start_nodes``). The admin user is (re)asserted every time.
        """
        self._bring_up(self.nodes, progress, timeout)

    def start_node(self, index: int, progress: Progress = _quiet, *, timeout: float = 120.0) -> None:
        """Start node ``index`` if it is not running, and wait until the running nodes see it again."""
        self._bring_up([self.node(index)], progress, timeout)

    def stop_node(self, index: int, *, timeout: float = 60.0) -> None:
        """Stop node ``index`` cleanly (SIGTERM, as ``rabbitmqctl stop`` would) and wait for it to exit.

        SIGKILL after ``timeout``. The other nodes keep running; ``start_node`` or ``up`` brings it back.
        """
        node = self.node(index)
        with self._lock():
            self._signal_node(node, signal.SIGTERM, time.monotonic() + timeout)

    def kill_node(self, index: int) -> None:
        """Kill node ``index`` as a crash would (SIGKILL to its VM, no shutdown) and wait until it is gone
        (up to 30 s: a loaded machine is slow to reap a large VM)."""
        node = self.node(index)
        with self._lock():
            self._signal_node(node, signal.SIGKILL, time.monotonic() + 30)

    def restart_node(self, index: int, progress: Progress = _quiet, *, timeout: float = 120.0) -> None:
        """Stop node ``index`` cleanly, start it again and wait until the cluster sees it running."""
        self.stop_node(index)
        self.start_node(index, progress, timeout=timeout)

    def down(self, *, timeout: float = 90.0, purge: bool = False) -> None:
        """Stop the nodes whose pid files are in ``base_dir`` and this cluster's epmd; nothing else.

        Idempotent. Nodes get SIGTERM (RabbitMQ shuts down cleanly on it), all but node 1 at once, then
        node 1, so the next ``up`` finds node 1 holding the newest tables and boots it first without
        waiting for a peer; SIGKILL only after ``timeout``. Data is kept unless ``purge`` is set, which
        then deletes ``base_dir``.
        """
        if not self.base_dir.exists():
            return
        with self._lock():
            deadline = time.monotonic() + timeout
            self._signal_nodes(self.nodes[1:], signal.SIGTERM, deadline)
            self._signal_nodes(self.nodes[:1], signal.SIGTERM, deadline)
            # Directories of nodes no longer in the layout (a cluster that shrank) are ours as well.
            leftovers = sorted(self.base_dir.glob("*/node.pid")) + sorted(self.base_dir.glob("*/wrapper.pid"))
            self._signal_pid_files(leftovers, signal.SIGTERM, deadline)
            stop_epmd(self.base_dir, self._owned_pid(self.base_dir / "epmd.pid"))
            self._reap()
        if purge:
            if not (self.base_dir / LAYOUT_FILE).exists() and not (self.home / ".erlang.cookie").exists():
                raise LocalClusterError(
                    f"refusing to delete {self.base_dir}: it does not look like a local cluster directory"
                )
            shutil.rmtree(self.base_dir)

    def status(self) -> list[NodeStatus]:
        """Per configured node: whether its Erlang VM runs (checked by pid, no CLI call), pid and ports."""
        self._reap()
        result = []
        for node in self.nodes:
            pid = self._owned_pid(self._node_dir(node) / "node.pid")
            result.append(
                NodeStatus(
                    index=node.index,
                    name=node.name,
                    running=pid is not None,
                    pid=pid,
                    amqp_port=node.amqp_port,
                    management_port=node.management_port,
                    dist_port=node.dist_port,
                )
            )
        return result

    def rabbitmqctl(self, *args: str, node: LocalNode | None = None, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n <node> args...`` with this cluster's cookie and epmd; return stdout."""
        return self._cli.run("rabbitmqctl", args, (node or self.nodes[0]).name, timeout)

    def rabbitmq_queues(self, *args: str, node: LocalNode | None = None, timeout: float = 60) -> str:
        """Run ``rabbitmq-queues -n <node> args...`` with this cluster's cookie and epmd; return stdout."""
        return self._cli.run("rabbitmq-queues", args, (node or self.nodes[0]).name, timeout)

    def rabbitmq_upgrade(self, *args: str, node: LocalNode | None = None, timeout: float = 120) -> str:
        """Run ``rabbitmq-upgrade -n <node> args...`` (``drain``, ``revive``: maintenance mode); return stdout."""
        return self._cli.run("rabbitmq-upgrade", args, (node or self.nodes[0]).name, timeout)

    def eval_erlang(self, expression: str, node: LocalNode | None = None, timeout: float = 60) -> str:
        """Evaluate an Erlang expression on a node (``rabbitmqctl eval``); return what it printed."""
        expression = expression.strip()
        if not expression.endswith("."):
            expression += "."
        return self.rabbitmqctl("eval", expression, node=node, timeout=timeout).strip()

    def eval_command(self, node: LocalNode | None = None) -> str:
        """The shell command that runs ``rabbitmqctl eval`` against this cluster, for ``--eval-command``."""
        return self._cli.eval_command((node or self.nodes[0]).name)

    def memory_rss_bytes(self) -> int:
        """Resident memory of this cluster's Erlang VMs together (for reports and benchmarks)."""
        return sum(rss_bytes(s.pid) for s in self.status() if s.pid is not None)

    # ---- starting --------------------------------------------------------------------------------

    def _bring_up(self, wanted: Sequence[LocalNode], progress: Progress, timeout: float) -> None:
        started_at = time.monotonic()
        if self.runtime.root is None:
            require_rabbitmq(RABBITMQ_SERVER)
        else:
            ensure_rootfs(progress, root=self.runtime.root)
        deadline = started_at + timeout
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._check_layout()
            running = {s.name for s in self.status() if s.running}
            to_start = [n for n in wanted if n.name not in running]
            for node in to_start:
                self._check_ports_free(node)
            self._ensure_cookie()
            if self._owned_pid(self.base_dir / "epmd.pid") is None:
                env = base_env(base_dir=self.base_dir, home=self.home, epmd_port=self.config.epmd_port)
                self._children.append(start_epmd(self.base_dir, self.config.epmd_port, env, progress))
            self._write_layout()
            self.runtime.prepare(self.base_dir)
            wrappers = self._start_nodes(to_start, deadline, progress)
            if to_start:
                progress(f"waiting for {len(to_start)} node(s) to boot and cluster")
            else:
                progress(f"all {len(wanted)} node(s) already running")
            should_run = [n for n in self.nodes if n.name in running or n in to_start]
            boot.await_cluster(
                should_run,
                wrappers,
                auth=self.credentials,
                deadline=deadline,
                progress=progress,
                repair_admin=lambda node: repair_admin_user(node, *self.credentials, self.rabbitmqctl),
                failure_hint=self._failure_hint,
                logs_hint=f"see the logs in {self.base_dir}/<node>/log/",
            )
            first = should_run[0]
            try:
                ensure_admin_user(first, *self.credentials, self.rabbitmqctl)
            except LocalClusterError as exc:
                raise LocalClusterError(f"{exc}; see {self._node_dir(first) / 'log'}") from exc
        progress(f"cluster of {len(should_run)} nodes is up ({time.monotonic() - started_at:.1f} s)")

    def _start_nodes(
        self, nodes: Sequence[LocalNode], deadline: float, progress: Progress
    ) -> dict[str, subprocess.Popen[bytes]]:
        """Start ``nodes``: those with data from an earlier boot one at a time, node 1 first, then the
        fresh ones all at once.

        A restarted node is let past its feature-flag check against its peers (it serves its API, or it
        waits for a peer's tables) before the next one starts: started at once, RabbitMQ 3.10 nodes that
        were clustered before now and then fail that check against each other (``badmap``). Fresh nodes
        start together, because the cluster forms fastest that way.
        """
        wrappers: dict[str, subprocess.Popen[bytes]] = {}
        restarted = [n for n in nodes if has_booted_before(self.base_dir, n)]
        for node in restarted:
            log = node_log(self.base_dir, node)
            offset = boot.log_size(log)
            progress(f"restarting {node.name} ({self._ports_of(node)})")
            wrappers[node.name] = self._spawn_node(node)
            state = boot.await_started_or_waiting(
                node,
                wrappers[node.name],
                auth=self.credentials,
                log=log,
                log_offset=offset,
                deadline=deadline,
                failure_hint=functools.partial(self._failure_hint, node),
                waits_for_decision=functools.partial(self._waits_for_decision, node),
            )
            if state == "waiting for tables":
                progress(f"{node.name} waits for its peers' tables; starting the next node")
            elif state == "waiting in mnesia start":
                progress(
                    f"{node.name} waits in Mnesia's start for a peer to settle a transaction the crash "
                    "left undecided; starting the next node"
                )
        for node in nodes:
            if node not in restarted:
                progress(f"starting {node.name} ({self._ports_of(node)})")
                wrappers[node.name] = self._spawn_node(node)
        return wrappers

    @staticmethod
    def _ports_of(node: LocalNode) -> str:
        return (
            f"amqp 127.0.0.1:{node.amqp_port}, management {node.management_url}, "
            f"distribution {node.dist_port}"
        )

    def _spawn_node(self, node: LocalNode) -> subprocess.Popen[bytes]:
        directory = write_node_files(self.base_dir, self.config, node)
        (directory / "node.pid").unlink(missing_ok=True)
        with open(directory / "stdout.log", "ab") as log:
            wrapper = subprocess.Popen(
                self.runtime.command([str(RABBITMQ_SERVER)], base_dir=self.base_dir, cwd=directory),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.runtime.environment(
                    node_env(base_dir=self.base_dir, home=self.home, config=self.config, node=node)
                ),
                cwd=directory,
                start_new_session=True,  # the node outlives `local up` and ignores its Ctrl-C
                close_fds=True,
            )
        self._children.append(wrapper)
        (directory / "wrapper.pid").write_text(f"{wrapper.pid}\n")
        return wrapper

    def _check_layout(self) -> None:
        """Refuse layouts that cannot work with what runs or is stored in base_dir; allow growing."""
        recorded = LocalClusterConfig.recorded(self.base_dir)
        if recorded is None or recorded.layout() == self.config.layout():
            return
        same_but_nodes = {**recorded.layout(), "nodes": self.config.nodes} == self.config.layout()
        if same_but_nodes and recorded.nodes < self.config.nodes:
            return  # more nodes: the new ones join through peer discovery, running ones are untouched
        running = [
            pid_file.parent.name for pid_file in self.base_dir.glob("*/node.pid") if self._owned_pid(pid_file)
        ]
        if running:
            raise LocalClusterError(
                f"{self.base_dir} runs a cluster with another layout ({describe_layout(recorded.layout())}); "
                f"stop it first with `queue-balancer local down`, or use another {ENV_BASE_DIR}"
            )
        if recorded.node_prefix != self.config.node_prefix or recorded.nodes > self.config.nodes:
            raise LocalClusterError(
                f"{self.base_dir} holds the data of a cluster with another layout "
                f"({describe_layout(recorded.layout())}); "
                f"delete it with `queue-balancer local down --purge`, or use another {ENV_BASE_DIR}"
            )

    def _write_layout(self) -> None:
        path = self.base_dir / LAYOUT_FILE
        path.write_text(json.dumps(self.config.layout(), indent=2) + "\n")

    def _ensure_cookie(self) -> None:
        """A random cookie, written once; the nodes and every CLI call read it through HOME."""
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if cookie.exists():
            return
        value = "".join(secrets.choice(string.ascii_uppercase) for _ in range(32))
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)

    def _check_ports_free(self, node: LocalNode, grace: float = 30.0) -> None:
        deadline = time.monotonic() + grace
        for label, port in (
            ("AMQP", node.amqp_port),
            ("management", node.management_port),
            ("distribution", node.dist_port),
        ):
            owner = port_in_use(port)
            # A listener no process owns any more is a node that just died (kill -9, crash): the kernel
            # releases it within moments, so give it that time instead of failing a restart.
            while owner == UNKNOWN_OWNER and time.monotonic() < deadline:
                time.sleep(0.2)
                owner = port_in_use(port)
            if owner is not None:
                raise LocalClusterError(
                    f"cannot start {node.name}: its {label} port {port} on 127.0.0.1 is already in use{owner}"
                )

    def _waits_for_decision(self, node: LocalNode, timeout: float) -> bool:
        """Whether Mnesia's recovery process on a booting node waits for a peer to tell the outcome of a
        transaction (its state's ``unclear_pid``, set only then); False when the node does not answer."""
        try:
            return self.eval_erlang(_WAITS_FOR_DECISION, node=node, timeout=timeout) == "waiting"
        except LocalClusterError:
            return False

    def _failure_hint(self, node: LocalNode) -> str:
        return boot.failure_hint(self._node_dir(node), node)

    # ---- stopping and ownership ------------------------------------------------------------------

    def _signal_node(self, node: LocalNode, signum: signal.Signals, deadline: float) -> None:
        """Send ``signum`` to one node (see ``_signal_pid_files``)."""
        self._signal_nodes([node], signum, deadline)

    def _signal_nodes(self, nodes: Sequence[LocalNode], signum: signal.Signals, deadline: float) -> None:
        """Send ``signum`` to the nodes' VMs and wrapper scripts at once (see ``_signal_pid_files``)."""
        self._signal_pid_files(
            [self._node_dir(node) / name for node in nodes for name in _PID_FILES], signum, deadline
        )

    def _signal_pid_files(self, pid_files: Sequence[Path], signum: signal.Signals, deadline: float) -> None:
        """Signal every owned pid at once, wait for each to exit (SIGKILL at the deadline), forget the files."""
        victims = [(pid_file, self._owned_pid(pid_file)) for pid_file in pid_files]
        for _, pid in victims:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
        for pid_file, pid in victims:
            if pid is not None and not wait_pid_exit(pid, deadline):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_pid_exit(pid, time.monotonic() + 10)
            if self._owned_pid(pid_file) is None:
                pid_file.unlink(missing_ok=True)
        self._reap()

    def _owned_pid(self, pid_file: Path) -> int | None:
        return owned_pid(
            pid_file,
            base_dir=self.base_dir,
            home=self.home,
            epmd_port=self.config.epmd_port,
            chroot=self.runtime.root,
        )

    def _reap(self) -> None:
        self._children = [child for child in self._children if child.poll() is None]

    def _node_dir(self, node: LocalNode) -> Path:
        return node_dir(self.base_dir, node)

    @contextlib.contextmanager
    def _lock(self, wait: float = 300.0) -> Iterator[None]:
        """Serialise up/down of the same base_dir (two terminals, or a test and a user)."""
        with exclusive_lock(self.base_dir / ".lock", wait=wait, holder="another `local up` or `local down`"):
            yield
