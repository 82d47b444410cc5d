"""The bench's own 3-node cluster, and a freshly seeded workload on it for every measurement.

Why its own: other engineers' clusters run on 57xx/58xx/59xx ports at the same time, and the bench must
neither disturb them nor depend on them. Its nodes live in a temp directory and on ports 6001.. (AMQP),
16001.. (management), 26001.. (distribution), epmd 4601; they are stopped however the bench ends
(normal end, error, Ctrl-C or SIGTERM), unless ``keep`` asks otherwise.
"""

from __future__ import annotations

import contextlib
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
from queue_balancer.management import ManagementClient

BENCH_AMQP, BENCH_MANAGEMENT, BENCH_DIST, BENCH_EPMD = 6001, 16001, 26001, 4601


def progress(message: str) -> None:
    """One timestamped line on stderr: the bench takes minutes, and silence looks like a hang."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so the cluster is stopped on the way out


@contextlib.contextmanager
def bench_cluster(*, keep: bool = False) -> Iterator[LocalCluster]:
    """A running 3-node cluster in a new temp directory; stopped and deleted on exit unless ``keep``."""
    base_dir = Path(tempfile.mkdtemp(prefix="queue-balancer-bench-"))
    cluster = LocalCluster(
        LocalClusterConfig(
            base_dir=base_dir,
            nodes=3,
            amqp_base=BENCH_AMQP,
            management_base=BENCH_MANAGEMENT,
            dist_base=BENCH_DIST,
            epmd_port=BENCH_EPMD,
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
            progress("stopping the bench cluster")
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
