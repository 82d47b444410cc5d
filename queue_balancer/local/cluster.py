"""A real RabbitMQ cluster on loopback, started from Debian's ``rabbitmq-server`` without touching the system.

Why this exists: the balancer must be exercised against real leaders, mirrors and Raft groups, and a
developer's machine (or CI container) has no systemd and often another RabbitMQ already. So every node here
gets its own name, ports, Erlang cookie, data and log directories under one ``base_dir``; its own ``epmd``
listens on 127.0.0.1 on a private port; nothing binds the default ports (4369, 5672, 15672, 25672) or any
non-loopback address. The binaries in ``/usr/lib/rabbitmq/bin`` are run as the current user (the
``/usr/sbin`` wrappers would switch to the ``rabbitmq`` user and its system-wide cookie).

Every wait is on an observed condition with a deadline (a process alive, a port answering, the management
API listing all nodes as running), never a bare sleep.

Layout of ``base_dir``::

    cluster.json            the layout ``up`` started (node count, ports, prefix), for ``status``/``down``
    home/.erlang.cookie     this cluster's cookie (mode 0400); HOME of every node and CLI call
    epmd.pid, epmd.log      the private epmd
    qb1/                    one directory per node: rabbitmq.conf, enabled_plugins, data/, log/,
                            node.pid (the Erlang VM), wrapper.pid (the rabbitmq-server script), stdout.log
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from queue_balancer.errors import BalancerError

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
ENV_BASE_DIR = "QUEUE_BALANCER_LOCAL_DIR"
LAYOUT_FILE = "cluster.json"
# Ports other RabbitMQ installations use by default; the local cluster must leave them alone.
DEFAULT_RABBITMQ_PORTS = (4369, 5672, 15672, 25672)

# Extra Erlang flags for every node and CLI call. The distribution listener is pinned to loopback here
# (and again through rabbitmq.conf) because the CLI reads no rabbitmq.conf; -start_epmd false makes a
# node fail loudly instead of spawning a stray epmd on 0.0.0.0 when ours is not running.
_UNKNOWN_OWNER = " by another process"
_MEMORY_SIZE = re.compile(r"\d+(kB|MB|GB|KiB|MiB|GiB|k|K|M|G)?")
_ERL_LOOPBACK_ARGS = "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"


class LocalClusterError(BalancerError):
    """The local cluster could not be started, stopped or reached; the message says what to do."""


def default_base_dir() -> Path:
    """Where the local cluster lives: ``$QUEUE_BALANCER_LOCAL_DIR``, else ~/.local/state/queue-balancer/cluster."""
    configured = os.environ.get(ENV_BASE_DIR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "state" / "queue-balancer" / "cluster"


@dataclass(frozen=True)
class LocalNode:
    """One node of the local cluster and the loopback ports it owns."""

    index: int  # 1-based
    name: str  # e.g. "qb1@localhost"
    amqp_port: int
    management_port: int
    dist_port: int

    @property
    def short_name(self) -> str:
        """The part before ``@``; also the name of the node's directory under ``base_dir``."""
        return self.name.split("@", 1)[0]

    @property
    def management_url(self) -> str:
        """Base URL of this node's management API (no trailing slash)."""
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def amqp_url(self) -> str:
        """AMQP URL of this node, without credentials."""
        return f"amqp://127.0.0.1:{self.amqp_port}/"


@dataclass(frozen=True)
class NodeStatus:
    """What ``status`` observed about one node: is its VM running, under which pid, on which ports."""

    index: int
    name: str
    running: bool
    pid: int | None
    amqp_port: int
    management_port: int
    dist_port: int


@dataclass(frozen=True)
class LocalClusterConfig:
    """Where the local cluster lives, how many nodes it has, and the port blocks it owns.

    Node ``i`` (1-based) gets ``amqp_base + i - 1``, ``management_base + i - 1`` and ``dist_base + i - 1``;
    all nodes share one private epmd on ``epmd_port``. Two clusters with different ``base_dir`` and
    non-overlapping port blocks run side by side.
    """

    base_dir: Path = dataclasses.field(default_factory=default_base_dir)
    nodes: int = 3
    amqp_base: int = 5701
    management_base: int = 15701
    dist_base: int = 25701
    epmd_port: int = 4701
    node_prefix: str = "qb"
    user: str = "admin"
    password: str = "admin"
    # Per node; RabbitMQ blocks publishers above it, so keep it well above what `local seed` needs.
    memory_high_watermark: str = "1GB"
    disk_free_limit: str = "50MB"

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise LocalClusterError(f"a local cluster needs at least one node, not {self.nodes}")
        if not self.node_prefix or not all(
            c.isascii() and (c.isalnum() or c in "_-") for c in self.node_prefix
        ):
            raise LocalClusterError(
                f"node prefix {self.node_prefix!r} must be ASCII letters, digits, '_' or '-'"
            )
        if not self.user or not self.password:
            raise LocalClusterError("the admin user name and password must not be empty")
        for label, size in (
            ("memory_high_watermark", self.memory_high_watermark),
            ("disk_free_limit", self.disk_free_limit),
        ):
            # RabbitMQ silently falls back to its defaults (40 % of RAM for memory) on a value it cannot parse.
            if not _MEMORY_SIZE.fullmatch(size):
                raise LocalClusterError(f"{label} {size!r} is not a size like 512MB, 1GB or 1073741824")
        ports = self.ports()
        for label, port in ports.items():
            if not 1024 <= port <= 65535:
                raise LocalClusterError(
                    f"{label} port {port} is outside 1024..65535; choose other base ports"
                )
            if port in DEFAULT_RABBITMQ_PORTS:
                raise LocalClusterError(
                    f"{label} port {port} is a default RabbitMQ port, which the local cluster leaves free; "
                    "choose other base ports"
                )
        by_port: dict[int, str] = {}
        for label, port in ports.items():
            if port in by_port:
                raise LocalClusterError(f"{label} and {by_port[port]} would both use port {port}")
            by_port[port] = label

    def node(self, index: int) -> LocalNode:
        """Node ``index`` (1-based) of this layout."""
        offset = index - 1
        return LocalNode(
            index=index,
            name=f"{self.node_prefix}{index}@localhost",
            amqp_port=self.amqp_base + offset,
            management_port=self.management_base + offset,
            dist_port=self.dist_base + offset,
        )

    def all_nodes(self) -> list[LocalNode]:
        """Every node of this layout, in index order."""
        return [self.node(i) for i in range(1, self.nodes + 1)]

    def ports(self) -> dict[str, int]:
        """Every port this layout owns, labelled for error messages."""
        labelled = {"epmd": self.epmd_port}
        for node in self.all_nodes():
            labelled[f"AMQP of {node.name}"] = node.amqp_port
            labelled[f"management of {node.name}"] = node.management_port
            labelled[f"distribution of {node.name}"] = node.dist_port
        return labelled

    def layout(self) -> dict[str, Any]:
        """The part of the configuration that ``up`` records in ``cluster.json`` (no credentials)."""
        return {
            "nodes": self.nodes,
            "amqp_base": self.amqp_base,
            "management_base": self.management_base,
            "dist_base": self.dist_base,
            "epmd_port": self.epmd_port,
            "node_prefix": self.node_prefix,
        }

    @classmethod
    def recorded(
        cls, base_dir: Path, *, user: str = "admin", password: str = "admin"
    ) -> LocalClusterConfig | None:
        """The layout the last ``up`` in ``base_dir`` started, so ``status``/``down`` match it exactly."""
        path = base_dir / LAYOUT_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LocalClusterError(f"cannot read {path}: {exc}; delete it if the cluster is down") from exc
        try:
            return cls(
                base_dir=base_dir, user=user, password=password, **{k: data[k] for k in cls._layout_keys()}
            )
        except (KeyError, TypeError) as exc:
            raise LocalClusterError(f"{path} is not a layout written by `local up` ({exc})") from exc

    @staticmethod
    def _layout_keys() -> tuple[str, ...]:
        return ("nodes", "amqp_base", "management_base", "dist_base", "epmd_port", "node_prefix")


class LocalCluster:
    """Start, observe and stop the local cluster described by a ``LocalClusterConfig``."""

    def __init__(self, config: LocalClusterConfig) -> None:
        self.config = config
        self.nodes: list[LocalNode] = config.all_nodes()
        self.base_dir = config.base_dir.expanduser().absolute()
        self.home = self.base_dir / "home"
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

    def up(self, progress: Callable[[str], None] = lambda _: None, *, timeout: float = 240.0) -> None:
        """Start what is missing and return once every node runs, is clustered and serves the API.

        Idempotent: running nodes are left alone, stopped ones are started (all at once, because nodes
        that were stopped together wait for each other's tables when they restart), the cluster forms
        through classic-config peer discovery, and the admin user is (re)asserted every time.
        """
        _require_rabbitmq()
        started_at = time.monotonic()
        deadline = started_at + timeout
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._check_layout()
            running = {s.name for s in self.status() if s.running}
            to_start = [n for n in self.nodes if n.name not in running]
            for node in to_start:
                self._check_ports_free(node)
            self._ensure_cookie()
            self._ensure_epmd(progress)
            self._write_layout()
            wrappers: dict[str, subprocess.Popen[bytes]] = {}
            for node in to_start:
                progress(
                    f"starting {node.name} (amqp 127.0.0.1:{node.amqp_port}, "
                    f"management {node.management_url}, distribution {node.dist_port})"
                )
                wrappers[node.name] = self._start_node(node)
            if to_start:
                progress(f"waiting for {len(to_start)} node(s) to boot and cluster")
            else:
                progress(f"all {len(self.nodes)} node(s) already running")
            self._await_cluster(wrappers, deadline, progress)
            self._ensure_admin_user()
        progress(f"cluster of {len(self.nodes)} nodes is up ({time.monotonic() - started_at:.1f} s)")

    def down(self, *, timeout: float = 90.0, purge: bool = False) -> None:
        """Stop the nodes whose pid files are in ``base_dir`` and this cluster's epmd; nothing else.

        Idempotent. Nodes get SIGTERM (RabbitMQ shuts down cleanly on it) all at once and SIGKILL only
        after ``timeout``. Data is kept unless ``purge`` is set, which then deletes ``base_dir``.
        """
        if not self.base_dir.exists():
            return
        with self._lock():
            deadline = time.monotonic() + timeout
            victims: list[tuple[str, int]] = []
            for pid_file in sorted(self.base_dir.glob("*/node.pid")) + sorted(
                self.base_dir.glob("*/wrapper.pid")
            ):
                pid = self._owned_pid(pid_file)
                if pid is not None:
                    victims.append((pid_file.parent.name, pid))
            for _, pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for _, pid in victims:
                if not _wait_pid_exit(pid, deadline):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    _wait_pid_exit(pid, time.monotonic() + 10)
            for pid_file in list(self.base_dir.glob("*/node.pid")) + list(
                self.base_dir.glob("*/wrapper.pid")
            ):
                if self._owned_pid(pid_file) is None:
                    pid_file.unlink(missing_ok=True)
            self._stop_epmd()
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
        return self._cli("rabbitmqctl", args, node, timeout)

    def rabbitmq_queues(self, *args: str, node: LocalNode | None = None, timeout: float = 60) -> str:
        """Run ``rabbitmq-queues -n <node> args...`` with this cluster's cookie and epmd; return stdout."""
        return self._cli("rabbitmq-queues", args, node, timeout)

    def eval_erlang(self, expression: str, node: LocalNode | None = None, timeout: float = 60) -> str:
        """Evaluate an Erlang expression on a node (``rabbitmqctl eval``); return what it printed."""
        expression = expression.strip()
        if not expression.endswith("."):
            expression += "."
        return self.rabbitmqctl("eval", expression, node=node, timeout=timeout).strip()

    def memory_rss_bytes(self) -> int:
        """Resident memory of this cluster's Erlang VMs together (for reports and benchmarks)."""
        total = 0
        for status in self.status():
            if status.pid is not None:
                total += _rss_bytes(status.pid)
        return total

    # ---- paths and environment -------------------------------------------------------------------

    def _node_dir(self, node: LocalNode) -> Path:
        return self.base_dir / node.short_name

    def eval_command(self, node: LocalNode | None = None) -> str:
        """The shell command that runs ``rabbitmqctl eval`` against this cluster, for ``--eval-command``."""
        env = [
            f"{k}={v}"
            for k, v in sorted(self._cli_env().items())
            if k.startswith(("RABBITMQ_", "ERL_")) or k == "HOME"
        ]
        target = node or self.nodes[0]
        return shlex.join(["env", *env, str(RABBITMQ_BIN / "rabbitmqctl"), "-n", target.name, "eval"])

    def _base_env(self) -> dict[str, str]:
        # Inherit PATH and locale, but none of the caller's RabbitMQ/Erlang settings: a RABBITMQ_NODENAME
        # or ERL_EPMD_PORT exported in the user's shell must not redirect us to another cluster.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_", "ERLANG_")) and k not in ("HOME", "CONF_ENV_FILE")
        }
        if not (env.get("LC_ALL") or env.get("LANG")):
            env["LANG"] = "C.UTF-8"  # the CLI warns (and mangles names) under a latin1 locale
        env.update(
            {
                "HOME": str(self.home),
                "ERL_EPMD_PORT": str(self.config.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                # Without this, /etc/rabbitmq/rabbitmq-env.conf would be sourced by scripts and nodes.
                "RABBITMQ_CONF_ENV_FILE": str(self.base_dir / "rabbitmq-env.conf"),
            }
        )
        return env

    def _cli_env(self) -> dict[str, str]:
        env = self._base_env()
        # Port 0 = an ephemeral distribution port for each CLI call; the default 35672..35682 range is
        # shared with every other RabbitMQ CLI on the machine and runs out under parallel calls.
        env["RABBITMQ_CTL_DIST_PORT_MIN"] = "0"
        env["RABBITMQ_CTL_DIST_PORT_MAX"] = "0"
        env["RABBITMQ_CTL_ERL_ARGS"] = _ERL_LOOPBACK_ARGS
        return env

    def _node_env(self, node: LocalNode) -> dict[str, str]:
        node_dir = self._node_dir(node)
        env = self._base_env()
        env.update(
            {
                "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_CONFIG_FILE": str(node_dir / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node_dir / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(node_dir / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(node_dir / "data"),
                "RABBITMQ_MNESIA_DIR": str(node_dir / "data" / node.name),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(node_dir / "plugins-expand"),
                "RABBITMQ_LOG_BASE": str(node_dir / "log"),
                "RABBITMQ_PID_FILE": str(node_dir / "node.pid"),
                # Seeds the admin user (instead of guest) when the cluster is created; joining nodes
                # inherit users from the cluster, and `up` re-asserts the user on every run anyway.
                "RABBITMQ_DEFAULT_USER": self.config.user,
                "RABBITMQ_DEFAULT_PASS": self.config.password,
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": _ERL_LOOPBACK_ARGS,
            }
        )
        return env

    def _rabbitmq_conf(self, node: LocalNode) -> str:
        lines = [
            "# Written by `queue-balancer local up` on every start; edits are overwritten.",
            f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}",
            "management.tcp.ip = 127.0.0.1",
            f"management.tcp.port = {node.management_port}",
            "distribution.listener.interface = 127.0.0.1",
            f"distribution.listener.port_range.min = {node.dist_port}",
            f"distribution.listener.port_range.max = {node.dist_port}",
            "cluster_name = queue-balancer-local",
            # Leaders go where they are declared; `local seed` relies on it, and so does the default.
            "queue_master_locator = client-local",
            "cluster_formation.peer_discovery_backend = classic_config",
            *(f"cluster_formation.classic_config.nodes.{n.index} = {n.name}" for n in self.nodes),
            # Fresh nodes booting together: the first to take the formation lock finds no peer with
            # tables (the others wait for the lock), so retrying discovery only delays it (default
            # 10 x 500 ms). Waiting nodes poll the lock every 200 ms instead of global's backoff of up
            # to 8 s (default 10 internal retries, then 30 s between attempts). Restarts skip all this.
            "cluster_formation.discovery_retry_limit = 1",
            "cluster_formation.discovery_retry_interval = 200",
            "cluster_formation.internal_lock_retries = 1",
            "cluster_formation.lock_retry_limit = 600",
            "cluster_formation.lock_retry_timeout = 200",
            f"vm_memory_high_watermark.absolute = {self.config.memory_high_watermark}",
            f"disk_free_limit.absolute = {self.config.disk_free_limit}",
            "log.file.level = info",
            "log.console = false",
        ]
        return "\n".join(lines) + "\n"

    # ---- starting --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, wait: float = 300.0) -> Iterator[None]:
        """Serialise up/down of the same base_dir (two terminals, or a test and a user)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait
        with open(self.base_dir / ".lock", "w") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LocalClusterError(
                            f"another `local up` or `local down` has held {self.base_dir} for {wait:.0f} s; "
                            "wait for it to finish"
                        ) from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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
                f"{self.base_dir} runs a cluster with another layout ({_describe(recorded.layout())}); "
                f"stop it first with `queue-balancer local down`, or use another {ENV_BASE_DIR}"
            )
        if recorded.node_prefix != self.config.node_prefix or recorded.nodes > self.config.nodes:
            raise LocalClusterError(
                f"{self.base_dir} holds the data of a cluster with another layout ({_describe(recorded.layout())}); "
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

    def _ensure_epmd(self, progress: Callable[[str], None]) -> None:
        """Run our own epmd on 127.0.0.1 so nodes never start one on 0.0.0.0:4369 (or on our port)."""
        pid_file = self.base_dir / "epmd.pid"
        if self._owned_pid(pid_file) is not None:
            return
        port = self.config.epmd_port
        owner = _port_in_use(port)
        if owner is not None:
            raise LocalClusterError(f"epmd port {port} on 127.0.0.1 is already in use{owner}")
        epmd = _find_epmd()
        progress(f"starting epmd on 127.0.0.1:{port}")
        with open(self.base_dir / "epmd.log", "ab") as log:
            process = subprocess.Popen(
                [epmd, "-port", str(port), "-address", "127.0.0.1"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._base_env(),
                cwd=self.base_dir,  # part of how `down` recognises it as ours
                start_new_session=True,  # outlives the CLI and ignores its Ctrl-C
                close_fds=True,
            )
        self._children.append(process)
        pid_file.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + 10
        while not _port_accepts(port):
            if process.poll() is not None:
                raise LocalClusterError(
                    f"epmd exited with code {process.returncode} at start; see {self.base_dir / 'epmd.log'}"
                )
            if time.monotonic() > deadline:
                raise LocalClusterError(f"epmd did not listen on 127.0.0.1:{port} within 10 s")
            time.sleep(0.05)

    def _check_ports_free(self, node: LocalNode, grace: float = 30.0) -> None:
        deadline = time.monotonic() + grace
        for label, port in (
            ("AMQP", node.amqp_port),
            ("management", node.management_port),
            ("distribution", node.dist_port),
        ):
            owner = _port_in_use(port)
            # A listener no process owns any more is a node that just died (kill -9, crash): the kernel
            # releases it within moments, so give it that time instead of failing a restart.
            while owner == _UNKNOWN_OWNER and time.monotonic() < deadline:
                time.sleep(0.2)
                owner = _port_in_use(port)
            if owner is not None:
                raise LocalClusterError(
                    f"cannot start {node.name}: its {label} port {port} on 127.0.0.1 is already in use{owner}"
                )

    def _start_node(self, node: LocalNode) -> subprocess.Popen[bytes]:
        node_dir = self._node_dir(node)
        for sub in ("data", "log", "plugins-expand"):
            (node_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.base_dir / "rabbitmq-env.conf").touch()
        (node_dir / "rabbitmq.conf").write_text(self._rabbitmq_conf(node))
        (node_dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (node_dir / "node.pid").unlink(missing_ok=True)
        with open(node_dir / "stdout.log", "ab") as log:
            wrapper = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._node_env(node),
                cwd=node_dir,
                start_new_session=True,  # the node outlives `local up` and ignores its Ctrl-C
                close_fds=True,
            )
        self._children.append(wrapper)
        (node_dir / "wrapper.pid").write_text(f"{wrapper.pid}\n")
        return wrapper

    def _await_cluster(
        self,
        wrappers: Mapping[str, subprocess.Popen[bytes]],
        deadline: float,
        progress: Callable[[str], None],
    ) -> None:
        """Wait until every node's management API lists every node of the cluster as running."""
        expected = {n.name for n in self.nodes}
        ready: set[str] = set()
        seen: dict[str, str] = {}
        t0 = time.monotonic()
        auth = self.credentials
        repaired = False
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            while True:
                for name, wrapper in wrappers.items():
                    if name not in ready and wrapper.poll() is not None:
                        raise LocalClusterError(
                            f"{name} stopped while starting (exit code {wrapper.returncode}): "
                            f"{self._failure_hint(self._by_name(name))}"
                        )
                pending = [n for n in self.nodes if n.name not in ready]
                for node, answer in zip(
                    pending, pool.map(lambda n: _nodes_view(n, auth), pending), strict=True
                ):
                    if answer == "unauthorized":
                        # Management answers but rejects our user: a cluster created with other
                        # credentials. Repair once through the CLI, which needs only the cookie.
                        if not repaired:
                            progress(f"setting the password of user {self.config.user!r}")
                            self._repair_admin_user(node)
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
                if len(ready) == len(self.nodes):
                    return
                if time.monotonic() > deadline:
                    states = "; ".join(
                        f"{n.name} sees running: {seen[n.name]}"
                        if n.name in seen
                        else f"{n.name}'s management API does not answer"
                        for n in self.nodes
                        if n.name not in ready
                    )
                    raise LocalClusterError(
                        f"the local cluster did not come up in time ({states}); "
                        f"see the logs in {self.base_dir}/<node>/log/"
                    )
                time.sleep(0.5)

    def _ensure_admin_user(self) -> None:
        """Assert the admin user (administrator, all permissions on "/") and remove guest."""
        try:
            self._ensure_admin_user_via_api()
        except requests.RequestException as exc:
            raise LocalClusterError(
                f"the management API of {self.nodes[0].name} stopped answering while setting up the admin "
                f"user: {exc}; see {self._node_dir(self.nodes[0]) / 'log'}"
            ) from exc

    def _ensure_admin_user_via_api(self) -> None:
        first = self.nodes[0]
        session = requests.Session()
        session.auth = self.credentials
        base = f"{first.management_url}/api"
        who = session.get(f"{base}/whoami", timeout=10)
        if who.status_code == 401:
            self._repair_admin_user(first)
            who = session.get(f"{base}/whoami", timeout=10)
        _expect_ok(who, "check the admin user")
        user = quote(self.config.user, safe="")
        if "administrator" not in who.json().get("tags", []):
            body = {"password": self.config.password, "tags": "administrator"}
            _expect_ok(session.put(f"{base}/users/{user}", json=body, timeout=10), "tag the admin user")
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        permissions = session.get(f"{base}/permissions/%2F/{user}", timeout=10)
        if permissions.status_code != 200 or any(
            permissions.json().get(k) != v for k, v in everything.items()
        ):
            _expect_ok(
                session.put(f"{base}/permissions/%2F/{user}", json=everything, timeout=10),
                'grant the admin user all permissions on vhost "/"',
            )
        if self.config.user != "guest":
            guest = session.delete(f"{base}/users/guest", timeout=10)
            if guest.status_code not in (204, 404):
                _expect_ok(guest, "delete the guest user")
        session.close()

    def _repair_admin_user(self, node: LocalNode) -> None:
        user, password = self.credentials
        try:
            self.rabbitmqctl("add_user", user, password, node=node)
        except LocalClusterError as exc:
            if "already exists" not in str(exc):
                raise
            self.rabbitmqctl("change_password", user, password, node=node)
        self.rabbitmqctl("set_user_tags", user, "administrator", node=node)
        self.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*", node=node)

    def _by_name(self, name: str) -> LocalNode:
        return next(n for n in self.nodes if n.name == name)

    def _failure_hint(self, node: LocalNode) -> str:
        """The most telling line a dead node left, and where the full story is."""
        node_dir = self._node_dir(node)
        for path in (node_dir / "stdout.log", node_dir / "log" / f"{node.name}.log"):
            with contextlib.suppress(OSError):
                lines = [
                    line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()
                ]
                startup = [line for line in lines if line.startswith("Error during startup")]
                # The first error with a message says why; later ones are the supervisor's crash reports.
                errors = [m.group(1) for m in map(_LOG_ERROR.search, lines) if m]
                best = startup or errors or lines[-1:]
                if best:
                    return f"{best[0][:300]} (full log: {path})"
        return f"no log output (see {node_dir})"

    # ---- stopping and ownership ------------------------------------------------------------------

    def _owned_pid(self, pid_file: Path) -> int | None:
        """The pid in ``pid_file`` if that process is alive and belongs to this base_dir, else None.

        Ownership is checked on the command line (``-home <base_dir>/home`` for a node, our port for
        epmd, our node directory for the wrapper script), so a recycled pid is never signalled.
        """
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = _cmdline(pid)
        if cmdline is None:
            return None
        if pid_file.name == "node.pid":
            home = _arg_after(cmdline, "-home")
            owned = "beam" in cmdline[0] and home is not None and _same_path(home, self.home)
        elif pid_file.name == "epmd.pid":
            owned = (
                "epmd" in cmdline[0]
                and _arg_after(cmdline, "-port") == str(self.config.epmd_port)
                and _same_path(_cwd(pid), self.base_dir)
            )
        else:  # wrapper.pid: the rabbitmq-server shell script, started with cwd = its node directory
            owned = any("rabbitmq-server" in arg for arg in cmdline) and _same_path(
                _cwd(pid), pid_file.parent
            )
        return pid if owned else None

    def _reap(self) -> None:
        self._children = [child for child in self._children if child.poll() is None]

    def _stop_epmd(self) -> None:
        pid_file = self.base_dir / "epmd.pid"
        pid = self._owned_pid(pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_pid_exit(pid, time.monotonic() + 10)
        pid_file.unlink(missing_ok=True)

    # ---- CLI -------------------------------------------------------------------------------------

    def _cli(self, tool: str, args: tuple[str, ...], node: LocalNode | None, timeout: float) -> str:
        _require_rabbitmq()
        target = node or self.nodes[0]
        command = [str(RABBITMQ_BIN / tool), "-n", target.name, *args]
        try:
            done = subprocess.run(
                command, env=self._cli_env(), capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalClusterError(f"`{self._shell(command)}` did not finish within {timeout:g} s") from exc
        if done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip())[-2000:]
            raise LocalClusterError(
                f"`{self._shell(command)}` failed with exit code {done.returncode}: {detail}"
            )
        return done.stdout

    def _shell(self, command: list[str]) -> str:
        """The command as a user would type it, with the admin password masked."""
        return " ".join("***" if arg == self.config.password else arg for arg in command)


# ---- helpers (module level: no cluster state) ----------------------------------------------------


_LOG_ERROR = re.compile(r"\[error\] <[^>]*> (\S.*)")


def _require_rabbitmq() -> None:
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        raise LocalClusterError(
            "rabbitmq-server is not installed: apt-get install rabbitmq-server (Debian 12 ships 3.10)"
        )


def _find_epmd() -> str:
    for candidate in [
        shutil.which("epmd"),
        *sorted(map(str, Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))),
    ]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise LocalClusterError(
        "epmd was not found: apt-get install erlang-base (a dependency of rabbitmq-server)"
    )


def _nodes_view(node: LocalNode, auth: tuple[str, str]) -> set[str] | str | None:
    """Names of the running cluster members as ``node`` reports them; None if it does not answer yet."""
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


def _expect_ok(response: requests.Response, action: str) -> None:
    if response.status_code >= 300:
        raise LocalClusterError(
            f"could not {action}: HTTP {response.status_code} from {response.url}: {response.text[:200]}"
        )


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _port_in_use(port: int) -> str | None:
    """None if 127.0.0.1:port can be bound; otherwise a description of who holds it (best effort)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR like the Erlang listeners: a socket in TIME_WAIT after `down` is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            pass
        else:
            return None
    owner = _listener_owner(port)
    return f" by {owner}" if owner else _UNKNOWN_OWNER


def _listener_owner(port: int) -> str | None:
    """Which process listens on ``port`` (via /proc; None when not visible, e.g. another user's)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    cmdline = _cmdline(int(proc.name))
                    if cmdline is None:
                        return None  # a process on its way out (a killed VM's threads): not an owner
                    home = _arg_after(cmdline, "-home")
                    hint = ""
                    if home and home.endswith("/home"):
                        hint = (
                            f" - a RabbitMQ node of {home[: -len('/home')]}; if that is a local cluster, "
                            f"stop it with `{ENV_BASE_DIR}={home[: -len('/home')]} queue-balancer local down`"
                        )
                    return f"pid {proc.name} ({Path(cmdline[0]).name}){hint}"
    return None


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state in ("Z", "X") or not raw:
        return None  # a zombie is not running, whatever kill(pid, 0) says
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _same_path(a: str | Path | None, b: str | Path) -> bool:
    """Equal after resolving symlinks: /proc reports resolved paths, users may pass linked ones."""
    return a is not None and Path(a).resolve() == Path(b).resolve()


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _arg_after(cmdline: list[str], flag: str) -> str | None:
    with contextlib.suppress(ValueError, IndexError):
        return cmdline[cmdline.index(flag) + 1]
    return None


def _wait_pid_exit(pid: int, deadline: float) -> bool:
    while True:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child (epmd, wrapper), or it lingers
        if _cmdline(pid) is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _describe(layout: Mapping[str, Any]) -> str:
    return (
        f"{layout['nodes']} node(s) {layout['node_prefix']}N, amqp from {layout['amqp_base']}, "
        f"management from {layout['management_base']}, epmd {layout['epmd_port']}"
    )
