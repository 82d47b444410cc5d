"""The bench's own 3-node cluster, and a freshly seeded workload on it for every measurement.

Why its own: other engineers' clusters and test runs use their own port blocks at the same time, and the
bench must neither disturb them nor depend on them. Its nodes live in a temp directory and on slot 41.. of
the tests' port block (AMQP 5841.., management 15841.., distribution 25841.., epmd 4841, all shifted by
``QUEUE_BALANCER_TEST_PORT_OFFSET`` like the tests' own nodes: the integration suites use slots 1-3 and
50-84, the infra suites 85-99); they are stopped however the bench ends (normal end, error, Ctrl-C or
SIGTERM), unless ``keep`` asks otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bench import observe
from bench.observe import BenchError, Settled
from bench.workloads import Workload
from queue_balancer.local.cluster import LocalCluster, LocalClusterConfig
from queue_balancer.local.endpoint import stop_endpoint
from queue_balancer.management import ManagementClient

PORT_OFFSET = int(os.environ.get("QUEUE_BALANCER_TEST_PORT_OFFSET", "0"))
BENCH_SLOT = 40
"""Slot 41.. of the tests' port block (tests/conftest.py, tests/infra/local_ports.py), free in every suite."""
BENCH_AMQP, BENCH_MANAGEMENT, BENCH_DIST, BENCH_EPMD = (
    base + PORT_OFFSET + BENCH_SLOT for base in (5801, 15801, 25801, 4801)
)


def progress(message: str) -> None:
    """One timestamped line on stderr: the bench takes minutes, and silence looks like a hang."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so the cluster is stopped on the way out


@contextlib.contextmanager
def bench_cluster(*, keep: bool = False, rabbitmq: str = "3") -> Iterator[LocalCluster]:
    """A running 3-node cluster in a new temp directory; stopped and deleted on exit unless ``keep``.

    ``rabbitmq`` "4": RabbitMQ 4.0.5 from the trixie root file system (``local up --rabbitmq 4``), on the
    same ports (a bench runs one cluster at a time)."""
    base_dir = Path(tempfile.mkdtemp(prefix="queue-balancer-bench-"))
    cluster = LocalCluster(
        LocalClusterConfig(
            base_dir=base_dir,
            nodes=3,
            amqp_base=BENCH_AMQP,
            management_base=BENCH_MANAGEMENT,
            dist_base=BENCH_DIST,
            epmd_port=BENCH_EPMD,
            rabbitmq=rabbitmq,
        )
    )
    previous: Callable[[int, FrameType | None], Any] | int | None = signal.signal(signal.SIGTERM, _terminate)
    try:
        cluster.up(progress)
        yield cluster
    finally:
        signal.signal(signal.SIGTERM, previous)
        if keep:
            progress(
                f"cluster kept running in {base_dir}: `QUEUE_BALANCER_LOCAL_DIR={base_dir} "
                f"queue-balancer --local report`; stop it with `QUEUE_BALANCER_LOCAL_DIR={base_dir} "
                "queue-balancer local down --purge`"
            )
        else:
            progress("stopping the bench cluster and its local AWS endpoint")
            stop_endpoint(base_dir)
            cluster.down(purge=True)


def fresh(cluster: LocalCluster, client: ManagementClient, workload: Workload, label: str) -> Settled:
    """Reset the cluster, seed ``workload`` and return the settled view of it (every leader on node 1)."""
    deleted = observe.reset(client)
    progress(f"{label}: reset ({deleted} queues deleted), seeding")
    workload.seed(cluster, lambda _message: None)
    before = observe.settle(
        client,
        timeout=120 + workload.expected_messages / 1000,
        expected_messages=workload.expected_messages,
    )
    if not before.complete:
        raise BenchError(f"{label}: the seeded workload never settled: {before.problem}")
    if before.spread != workload.total_queues:
        raise BenchError(f"{label}: seeded leaders are not all on one node: {before.leaders}")
    return before
