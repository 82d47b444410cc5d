"""The cluster lock on a real node: two runs taking it at the same moment (one with a slow write), a
write slower than the window, and expiry judged by watching the value, whatever the holder's clock says.
And what a run finds when it starts: dead runs' temporary policies (removed), exact patterns (exact)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from queue_balancer.cli import main
from queue_balancer.errors import BalancerError
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.lock import LOCK_PARAMETER, ClusterLock, LockHeld, holding
from queue_balancer.management import ManagementClient
from queue_balancer.model import QueueRef
from queue_balancer.movers import exact_pattern, temporary_policy_name
from tests.conftest import wait_until
from tests.integration.test_balance import declare


@dataclass
class SlowWrites:
    """The real node's global parameters, the first write sent ``delay`` seconds late (a slow network)."""

    client: ManagementClient
    delay: float
    slow: bool = True
    """Only the first write is slow."""

    def global_parameter(self, name: str) -> dict[str, Any]:
        return self.client.global_parameter(name)

    def put_global_parameter(
        self, name: str, value: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        """The delay stands for the network: the PUT itself is not cut by ``deadline``."""
        if self.slow:
            self.slow = False
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


def test_a_write_slower_than_the_window_counts_only_after_a_lease_unchanged(client: ManagementClient) -> None:
    """It may have landed after another taker read its own value back: that one stops at its next renewal."""
    slow = ClusterLock(SlowWrites(client, 1.3), "tester slow", "slow", lease_seconds=3, poll=0.2)
    started = time.monotonic()
    slow.acquire()
    assert time.monotonic() - started >= 1.3 + 3
    held = slow.holder()
    assert held is not None and held.run_id == "slow"


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


def test_a_balance_run_first_removes_the_policies_runs_that_died_left(
    clean_cluster: LocalCluster,
    client: ManagementClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A killed run's temporary policy pins its queue (report shows it) until the next run removes it."""
    monkeypatch.setenv(ENV_BASE_DIR, str(clean_cluster.base_dir))
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_EVAL_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    node = clean_cluster.nodes[0].name
    declare(client, "/", "pinned")
    leftover = temporary_policy_name(QueueRef("/", "pinned"), "dead1")
    client.put_policy(
        "/", leftover, pattern=exact_pattern("pinned"), definition={"max-length": 10**6}, priority=9
    )
    wait_until(
        lambda: client.queue("/", "pinned").get("policy") == leftover, timeout=30, what="the policy shown"
    )
    assert main(["--local", "report", "--format", "json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert reported["pinned"] == [
        {"vhost": "/", "queue": "pinned", "node": node, "policy": leftover, "run": "dead1"}
    ]

    assert main(["--local", "balance"]) == 0
    err = capsys.readouterr().err
    assert f"removed temporary policy {leftover} in vhost /, left by a run that is not live" in err
    assert [p["name"] for p in client.policies()] == []


NEWLINE_QUEUE = 'rabbit_misc:r(<<"/">>, queue, <<"q\\n">>)'
"""The resource of a queue named "q\\n" in Erlang: clients cannot declare it (AMQP and HTTP strip CR and LF
from queue names on 3.10: "q\\n" becomes "q"), so the node declares it itself."""


def test_an_exact_pattern_governs_its_queue_and_not_one_named_with_a_trailing_newline(
    clean_cluster: LocalCluster, client: ManagementClient
) -> None:
    """RabbitMQ matches policy patterns with Erlang's re (PCRE): ``$`` also matches before a final newline,
    so ``^q$`` governs a queue named "q\\n" too; ``exact_pattern`` (``^q\\z``) does not."""
    declare(client, "/", "q")
    clean_cluster.eval_erlang(f'rabbit_amqqueue:declare({NEWLINE_QUEUE}, true, false, [], none, <<"admin">>)')
    try:

        def policies() -> dict[str, str | None]:
            return {q["name"]: q.get("policy") or None for q in client.queues("/")}

        client.put_policy("/", "dollar", pattern="^q$", definition={"max-length": 10**6}, priority=1)
        wait_until(
            lambda: policies() == {"q": "dollar", "q\n": "dollar"}, timeout=30, what="'^q$' governing 'q\\n'"
        )
        client.put_policy(
            "/", "exact", pattern=exact_pattern("q"), definition={"max-length": 10**6}, priority=2
        )
        governed = wait_until(
            lambda: (found := policies())["q"] == "exact" and found, timeout=30, what="'exact' governing 'q'"
        )
        assert governed == {"q": "exact", "q\n": "dollar"}
    finally:  # the HTTP API cannot name it, so the session cluster's cleanup could not delete it
        clean_cluster.eval_erlang(
            f'{{ok, Q}} = rabbit_amqqueue:lookup({NEWLINE_QUEUE}), rabbit_amqqueue:delete(Q, false, false, <<"admin">>)'
        )
