"""Real RabbitMQ nodes for the tests that need them: one 3-node cluster per test session, shared by
tests/integration and tests/statemachine.

The cluster lives in a temporary directory and on its own port block (AMQP 5801.., management 15801..,
distribution 25801.., epmd 4801), so it never meets the developer's `queue-balancer local up` cluster
(57xx) or anything on the default ports. It is stopped however the session ends: fixture teardown on
success, failure and Ctrl-C, an atexit hook and a SIGTERM handler as fallbacks. Every wait is on an
observed condition with a deadline (``wait_until``), never a bare sleep.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TypeVar

import pytest

from queue_balancer.local.cluster import RABBITMQ_SERVER, LocalCluster, LocalClusterConfig
from tests.parallel import port_offset, schedule_on_workers

# The session cluster's port block; the developer's own `local up` cluster uses 57xx.
# QUEUE_BALANCER_TEST_PORT_OFFSET shifts the block, so two test runs on one machine do not collide; each
# xdist worker adds its own block on top (tests/parallel.py).
PORT_OFFSET = port_offset()
TEST_PORTS = {
    "amqp_base": 5801 + PORT_OFFSET,
    "management_base": 15801 + PORT_OFFSET,
    "dist_base": 25801 + PORT_OFFSET,
    "epmd_port": 4801 + PORT_OFFSET,
}
# RabbitMQ 4.0's session cluster: its own block next to the 3.10 one (tests use +50 and +60 for others).
TEST_PORTS_4 = {key: port + 80 for key, port in TEST_PORTS.items()}
T = TypeVar("T")

# A suite started in the background by a non-interactive shell (`make test &`, nohup, setsid) inherits
# SIGINT ignored, and so would every process it starts: Python then installs no KeyboardInterrupt handler,
# `_thread.interrupt_main` does nothing, and the Ctrl-C tests fail for a reason no user meets. A Python
# handler, unlike SIG_IGN, is not inherited across exec: the CLI processes the tests start get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the groups into scheduling scopes
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    schedule_on_workers(items)


def wait_until(condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test with ``what`` at the deadline.

    The management API's statistics lag a few seconds, so assertions on message counts go through here.
    """
    deadline = time.monotonic() + timeout
    last = condition()
    while not last:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))  # never past the deadline
        last = condition()
    return last


def holds_for(condition: Callable[[], str | None], *, seconds: float, interval: float = 0.2) -> None:
    """Poll ``condition`` for ``seconds``; fail the test with what it returns the first time it returns
    something (None: still holds). For a state that must last, not only be reached: a change RabbitMQ
    applies asynchronously can undo it a moment later."""
    deadline = time.monotonic() + seconds
    while True:
        broken = condition()
        if broken is not None:
            pytest.fail(broken)
        if time.monotonic() >= deadline:
            return
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node cluster on loopback for the whole session, always stopped at the end."""
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        pytest.skip(
            "rabbitmq-server is not installed: apt-get install rabbitmq-server (Debian 12 ships 3.10)"
        )
    base_dir = tmp_path_factory.mktemp("local-cluster")
    config = LocalClusterConfig(
        base_dir=base_dir,
        nodes=3,
        amqp_base=TEST_PORTS["amqp_base"],
        management_base=TEST_PORTS["management_base"],
        dist_base=TEST_PORTS["dist_base"],
        epmd_port=TEST_PORTS["epmd_port"],
    )
    cluster = LocalCluster(config)
    atexit.register(cluster.down)  # if the interpreter exits without running fixture teardown
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # a killed run still tears down
    try:
        started = time.monotonic()
        cluster.up()
        print(f"\nlocal cluster up in {time.monotonic() - started:.1f} s ({base_dir})")
        yield cluster
    finally:
        cluster.down()
        atexit.unregister(cluster.down)
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def local_cluster_4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node RabbitMQ 4.0.5 cluster (Debian 13's package in a chroot) for the whole session.

    The root file system is built once per machine (about a minute; later sessions reuse it), then the
    cluster costs what the 3.10 one does (about 20-30 s here). Always stopped at the end.
    """
    config = LocalClusterConfig(
        base_dir=tmp_path_factory.mktemp("local-cluster-4"),
        nodes=3,
        amqp_base=TEST_PORTS_4["amqp_base"],
        management_base=TEST_PORTS_4["management_base"],
        dist_base=TEST_PORTS_4["dist_base"],
        epmd_port=TEST_PORTS_4["epmd_port"],
        rabbitmq="4",
    )
    cluster = LocalCluster(config)
    atexit.register(cluster.down)
    try:
        started = time.monotonic()
        cluster.up()
        print(f"\nRabbitMQ 4 local cluster up in {time.monotonic() - started:.1f} s ({config.base_dir})")
        yield cluster
    finally:
        cluster.down()
        atexit.unregister(cluster.down)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
