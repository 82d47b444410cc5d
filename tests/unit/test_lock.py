"""The cluster lock: one run at a time, a refusal naming the holder, expiry, read-after-write."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from queue_balancer.errors import NotFound
from queue_balancer.lock import LOCK_PARAMETER, ClusterLock, LockHeld, LockHolder, LockLost
from queue_balancer.model import QueueRef
from queue_balancer.movers import cleanup, derived_run_id, temporary_policy_name
from queue_balancer.movers.policies import owning_run
from tests.unit.fake_cluster import FakeCluster


@dataclass
class Parameters:
    values: dict[str, Any] = field(default_factory=dict)
    on_put: list[Any] = field(default_factory=list)
    """Values another run writes right after ours (a race)."""

    def global_parameter(self, name: str) -> dict[str, Any]:
        if name not in self.values:
            raise NotFound(f"not found: {name}", status=404)
        return {"name": name, "value": self.values[name]}

    def put_global_parameter(self, name: str, value: Mapping[str, Any]) -> None:
        self.values[name] = dict(value)
        if self.on_put:
            self.values[name] = self.on_put.pop(0)

    def delete_global_parameter(self, name: str) -> bool:
        return self.values.pop(name, None) is not None


def lock(api: Parameters, run_id: str, now: list[float]) -> ClusterLock:
    return ClusterLock(
        api, f"tester {run_id}", run_id, lease_seconds=60, clock=lambda: now[0], sleep=lambda _s: None
    )


def test_a_second_run_is_refused_with_the_holder_and_its_age() -> None:
    api, now = Parameters(), [1000.0]
    lock(api, "one", now).acquire()
    now[0] += 42
    with pytest.raises(LockHeld, match=r"run one of tester one, holding it for 42 s"):
        lock(api, "two", now).acquire()


def test_an_expired_lock_is_taken_over_and_its_holder_learns_it() -> None:
    api, now = Parameters(), [1000.0]
    first = lock(api, "one", now)
    first.acquire()
    now[0] += 61
    lock(api, "two", now).acquire()
    with pytest.raises(LockLost, match="run one lost the cluster's lock; it is held by run two"):
        first.renew()
    first.release()  # never removes another run's lock
    assert api.values[LOCK_PARAMETER]["run_id"] == "two"


def test_a_run_that_loses_the_race_after_writing_is_refused() -> None:
    api, now = Parameters(), [1000.0]
    other = LockHolder("tester two", "two", 1000.0, 1000.0, 60).to_value()
    api.on_put.append(other)
    with pytest.raises(LockHeld, match="at the same moment: run two"):
        lock(api, "one", now).acquire()


@pytest.mark.parametrize(
    "value", ["garbage", {"run_id": "x"}, {**LockHolder("o", "r", 0, 1e999, 1).to_value()}]
)
def test_a_lock_value_this_version_did_not_write_counts_as_no_lock(value: Any) -> None:
    api, now = Parameters({LOCK_PARAMETER: value}), [1000.0]
    lock(api, "one", now).acquire()


def test_cleanup_removes_only_the_policies_of_dead_runs() -> None:
    cluster = FakeCluster()
    ref = QueueRef("/", "q")
    for run in ("live", "dead", ""):
        cluster.add_policy("/", temporary_policy_name(ref, run), "^q$", {"ha-mode": "all"})
    cluster.add_policy("/", "own", ".*", {"ha-mode": "all"})
    removed = cleanup(cluster, frozenset({"live"}))
    assert sorted(name for _, name in removed) == sorted(
        [temporary_policy_name(ref, "dead"), temporary_policy_name(ref, "")]
    )
    assert sorted(name for _, name in cluster.policy_store) == sorted(
        ["own", temporary_policy_name(ref, "live")]
    )


def test_a_workflow_run_id_names_its_lock_and_policies_stably_and_validly() -> None:
    execution = "balance-2026-11-27T14:50:00Z-3f9a"
    run_id = derived_run_id(execution)
    assert run_id == derived_run_id(execution) != derived_run_id(execution + "x")
    name = temporary_policy_name(QueueRef("/", "q"), run_id)  # raises on an invalid run id
    assert owning_run(name) == run_id


def test_a_live_workflow_holder_keeps_its_policies_from_a_cli_cleanup() -> None:
    api, now = Parameters(), [1000.0]
    workflow = derived_run_id("execution-1")
    lock(api, workflow, now).acquire()
    cluster = FakeCluster()
    ref = QueueRef("/", "q")
    cluster.add_policy("/", temporary_policy_name(ref, workflow), "^q$", {"ha-mode": "all"})
    with pytest.raises(LockHeld, match=f"run {workflow} of tester"):
        lock(api, "cli", now).acquire()
    assert cleanup(cluster, lock(api, "cli", now).live_runs()) == []
