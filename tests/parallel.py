"""How the suite runs on several pytest-xdist workers (`make test` uses `-n 3 --dist loadgroup`).

Most of the suite's time is spent waiting on RabbitMQ (a boot, a sync, a node's death noticed), not on
the CPU, so workers overlap those waits. Each worker is a separate pytest session: its own session
clusters on its own port block, its own temporary and local directories. Tests that share an expensive
session fixture or a module's nodes run on one worker (one xdist group); the groups that wait on real nodes
start first so that the cheap tiers fill the gaps at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from queue_balancer.local.layout import ENV_BASE_DIR

# A port block spans 100 slots (tests/conftest.py, tests/infra/local_ports.py). 2000 apart keeps every
# worker's block clear of every other's and of the ports that are 1000 apart inside one block (epmd 4801..
# vs AMQP 5801..) or 10000 apart (AMQP 5801.. vs management 15801.. vs distribution 25801..).
WORKER_PORT_STRIDE = 2000
_EPHEMERAL_PORTS = 32768  # Linux hands ports from here on to outgoing connections: never a listener there
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... under xdist; unset when run alone

# Session fixtures that cost a CDK synthesis (tens of seconds of CPU each): their tests share one worker.
_SYNTH_FIXTURES = frozenset({"cluster_synth", "app_synth", "existing_synth"})
# Tiers that need no node: they go last and fill the workers' gaps.
_CHEAP_TIERS = ("tests/unit/", "tests/test_quality.py")
# The groups that take longest (seconds of one worker, measured with `--durations` on 2 workers under load,
# 2026-11-27; only their order matters). They start first, spread over the workers (xdist hands
# out the first groups round robin), so no long group starts last and leaves one worker idle at the end.
_LONGEST_GROUPS = {
    "tests/statemachine/test_workflow.py": 580,
    "tests/infra/test_node_replacement.py": 450,
    "tests/faults/test_faults.py": 390,
    "tests/statemachine/test_cli_workflow.py": 275,
    "tests/integration/test_members.py": 265,
    "tests/statemachine/test_speed.py": 220,
    "tests/integration/test_local_cluster.py": 170,
    "tests/integration/test_balance.py": 140,
    "tests/infra/test_node_bootstrap.py": 115,
    "tests/integration/test_maintenance.py": 100,
}


def xdist_worker_index(worker: str | None = _WORKER) -> int:
    """0 when pytest runs alone; N for the xdist worker ``gwN``."""
    return int(worker.removeprefix("gw")) if worker else 0


def port_offset() -> int:
    """This process's shift of every test port: QUEUE_BALANCER_TEST_PORT_OFFSET + this worker's block."""
    offset = int(os.environ.get("QUEUE_BALANCER_TEST_PORT_OFFSET", "0")) + (
        xdist_worker_index() * WORKER_PORT_STRIDE
    )
    if 25801 + offset + 99 >= _EPHEMERAL_PORTS:
        raise pytest.UsageError(
            f"test port offset {offset} (QUEUE_BALANCER_TEST_PORT_OFFSET + worker x {WORKER_PORT_STRIDE}) "
            f"reaches the ephemeral ports ({_EPHEMERAL_PORTS}+): use fewer workers or a smaller offset"
        )
    return offset


if _WORKER and os.environ.get(ENV_BASE_DIR):
    # A test that falls back on the default local directory must not meet another worker's cluster there.
    os.environ[ENV_BASE_DIR] = str(Path(os.environ[ENV_BASE_DIR]) / _WORKER)


def xdist_group(item: pytest.Item) -> str:
    """The worker group of a test: the CDK synthesis's users together, otherwise its module."""
    if _SYNTH_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return "cdk-synth"
    return item.nodeid.split("::", 1)[0]


def schedule_on_workers(items: list[pytest.Item]) -> None:
    """Under xdist: group the tests for `--dist loadgroup`, the longest groups first, then the other tiers
    that wait on nodes, then the cheap ones (collection order otherwise)."""
    if not _WORKER:
        return  # alone, the suite runs in collection order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    items.sort(
        key=lambda item: (
            item.nodeid.startswith(_CHEAP_TIERS),
            -_LONGEST_GROUPS.get(xdist_group(item), 0),
        )
    )  # stable: collection order kept within a group
