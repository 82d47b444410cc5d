"""The cluster lock on a real node: two runs taking it at the same moment (one with a slow write), a
write slower than the window, and expiry judged by watching the value, whatever the holder's clock says."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from queue_balancer.errors import BalancerError
from queue_balancer.local.cluster import LocalCluster
from queue_balancer.lock import LOCK_PARAMETER, ClusterLock, LockHeld, holding
from queue_balancer.management import ManagementClient


@dataclass
class SlowWrites:
    """The real node's global parameters, each write sent ``delay`` seconds late (a slow network)."""

    client: ManagementClient
    delay: float

    def global_parameter(self, name: str) -> dict[str, Any]:
        return self.client.global_parameter(name)

    def put_global_parameter(self, name: str, value: Mapping[str, Any]) -> None:
        time.sleep(self.delay)  # the write is on its way: this is what is measured, not waited for
        self.client.put_global_parameter(name, value)

    def delete_global_parameter(self, name: str) -> bool:
        return self.client.delete_global_parameter(name)


@pytest.fixture
def client(clean_cluster: LocalCluster) -> Iterator[ManagementClient]:
    user, password = clean_cluster.credentials
    client = ManagementClient(clean_cluster.nodes[0].management_url, user, password)
    client.delete_global_parameter(LOCK_PARAMETER)
    yield client
    client.delete_global_parameter(LOCK_PARAMETER)


def take_together(locks: list[ClusterLock]) -> dict[str, BaseException | None]:
    """Every lock's ``acquire`` started at the same moment on its own thread: run id -> error or None."""
    start = threading.Barrier(len(locks))
    results: dict[str, BaseException | None] = {}

    def take(lock: ClusterLock) -> None:
        start.wait(timeout=10)
        try:
            lock.acquire()
            results[lock.run_id] = None
        except BalancerError as exc:
            results[lock.run_id] = exc

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8], ids=["together", "slow-0.3s", "slow-0.8s"])
def test_two_runs_taking_the_lock_at_once_leave_exactly_one_holder(
    client: ManagementClient, delay: float
) -> None:
    """0.8 s: the review's case, a write that outlasted the old fixed 0.5 s settle (two holders then)."""
    fast = ClusterLock(client.fork(), "tester fast", "fast")
    slow = ClusterLock(SlowWrites(client.fork(), delay), "tester slow", "slow")
    results = take_together([fast, slow])
    holders = [run for run, error in results.items() if error is None]
    assert len(holders) == 1, results
    refused = next(error for error in results.values() if error is not None)
    assert isinstance(refused, LockHeld)
    held = fast.holder()
    assert held is not None and held.run_id == holders[0]


def test_a_write_slower_than_the_window_never_holds_the_lock(client: ManagementClient) -> None:
    slow = ClusterLock(SlowWrites(client, 1.3), "tester slow", "slow")
    with pytest.raises(LockHeld, match=r"writing the cluster's lock took 1.\d s"):
        slow.acquire()
    held = slow.holder()
    assert held is not None and held.run_id == "slow"  # it landed, but nobody holds it: it must expire


def test_expiry_is_watched_on_our_clock_whatever_the_holders_clock_says(client: ManagementClient) -> None:
    """A live holder whose clock lags an hour (its lock looks long dead) renews while we watch: refused.
    Once it is gone, its lock is taken over after a whole lease unchanged, not before."""
    lagging = ClusterLock(
        client.fork(), "tester lagging", "lagging", lease_seconds=6, wall_clock=lambda: time.time() - 3600
    )
    with holding(lagging):
        with pytest.raises(LockHeld, match="changed while we watched it"):
            ClusterLock(client.fork(), "tester two", "two", poll=0.2).acquire()
        dead_value = client.global_parameter(LOCK_PARAMETER)["value"]
    client.put_global_parameter(LOCK_PARAMETER, dead_value)  # it died without releasing
    started = time.monotonic()
    ClusterLock(client.fork(), "tester two", "two", poll=0.2).acquire()
    assert time.monotonic() - started >= 6
    held = lagging.holder()
    assert held is not None and held.run_id == "two"
