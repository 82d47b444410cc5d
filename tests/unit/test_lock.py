"""The cluster lock: one run at a time, a refusal naming the holder, expiry observed on our own clock
(never another machine's), read-after-write against slow writes, a run stopped by failing renewals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from queue_balancer.errors import ManagementError, NotFound
from queue_balancer.lock import (
    LOCK_PARAMETER,
    SETTLE_SECONDS,
    WRITE_WINDOW_SECONDS,
    ClusterLock,
    Heartbeat,
    LockHeld,
    LockHolder,
    LockLost,
    holding,
)
from queue_balancer.model import QueueRef
from queue_balancer.movers import cleanup, derived_run_id, temporary_policy_name
from queue_balancer.movers.policies import owning_run
from tests.unit.fake_cluster import FakeCluster


@dataclass
class Clocks:
    """This process's monotonic clock and its wall clock (another machine's may differ by hours)."""

    monotonic: float = 0.0
    wall: float = 1_000_000.0
    on_sleep: list[Callable[[], object]] = field(default_factory=list)
    """What others do while this process sleeps (one action per sleep)."""

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        if self.on_sleep:
            self.on_sleep.pop(0)()

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


@dataclass
class Parameters:
    """The global parameters; a PUT's latency (``put_seconds``) passes on the taker's clocks."""

    clocks: Clocks = field(default_factory=Clocks)
    values: dict[str, Any] = field(default_factory=dict)
    put_seconds: list[float] = field(default_factory=list)
    read_seconds: float = 0.0
    timeouts: bool = False
    """A PUT slower than its ``deadline`` fails on the client's side, but lands (a late write)."""
    deadlines: list[float | None] = field(default_factory=list)
    earlier_reads: list[Any] = field(default_factory=list)
    """What the next reads answer: reads served before another taker's write landed."""
    reads: int = 0

    def global_parameter(self, name: str) -> dict[str, Any]:
        self.reads += 1
        self.clocks.advance(self.read_seconds)
        if self.earlier_reads:
            value = self.earlier_reads.pop(0)
            if value is None:
                raise NotFound(f"not found: {name}", status=404)
            return {"name": name, "value": value}
        if name not in self.values:
            raise NotFound(f"not found: {name}", status=404)
        return {"name": name, "value": self.values[name]}

    def put_global_parameter(
        self, name: str, value: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        self.deadlines.append(deadline)
        seconds = self.put_seconds.pop(0) if self.put_seconds else 0.0
        if self.timeouts and deadline is not None and seconds > deadline:
            self.clocks.advance(deadline)
            self.values[name] = dict(value)  # the server got it; the answer came too late
            raise ManagementError("cannot reach the management API: timed out")
        self.clocks.advance(seconds)
        self.values[name] = dict(value)

    def delete_global_parameter(self, name: str) -> bool:
        return self.values.pop(name, None) is not None


def lock(api: Parameters, run_id: str, clocks: Clocks | None = None, **options: Any) -> ClusterLock:
    clocks = clocks or api.clocks
    return ClusterLock(
        api,
        f"tester {run_id}",
        run_id,
        lease_seconds=60,
        clock=lambda: clocks.monotonic,
        wall_clock=lambda: clocks.wall,
        sleep=clocks.sleep,
        **options,
    )


def holder_value(run_id: str, wall: float, lease: float = 60) -> dict[str, Any]:
    return LockHolder(f"tester {run_id}", run_id, wall, wall, lease).to_value()


def test_a_second_run_is_refused_at_once_with_the_holder_and_its_age() -> None:
    api = Parameters()
    lock(api, "one").acquire()
    api.clocks.advance(42)
    reads = api.reads
    with pytest.raises(LockHeld, match=r"run one of tester one, holding it for 43 s"):  # 1.25 s settle + 42 s
        lock(api, "two").acquire()
    assert api.reads == reads + 1  # no watching, no write


def test_a_dead_runs_lock_is_taken_over_only_after_a_whole_lease_unchanged() -> None:
    api = Parameters()
    first = lock(api, "one")
    first.acquire()
    api.clocks.advance(61)  # looks dead by its own times; still watched for a whole lease
    started = api.clocks.monotonic
    lock(api, "two").acquire()
    assert api.clocks.monotonic - started >= 60
    assert api.values[LOCK_PARAMETER]["run_id"] == "two"
    with pytest.raises(LockLost, match="run one lost the cluster's lock; it is held by run two"):
        first.renew()
    first.release()  # never removes another run's lock
    assert api.values[LOCK_PARAMETER]["run_id"] == "two"


def test_a_live_holder_whose_clock_lags_by_an_hour_keeps_its_lock() -> None:
    """Its heartbeat looks an hour old to us: we watch, it renews, we are refused."""
    api = Parameters()
    holder_clocks = Clocks(wall=api.clocks.wall - 3600)
    holder = lock(api, "one", holder_clocks)
    holder.acquire()
    quiet: list[Callable[[], object]] = [lambda: None] * 15
    api.clocks.on_sleep = [*quiet, holder.renew]  # its heartbeat, 16 s into our watch
    with pytest.raises(LockHeld, match="its lock changed while we watched it"):
        lock(api, "two").acquire()
    assert api.values[LOCK_PARAMETER]["run_id"] == "one"


def test_a_dead_holder_whose_clock_ran_ahead_is_not_alive_forever() -> None:
    api = Parameters(values={LOCK_PARAMETER: holder_value("one", 1_000_000.0 + 86_400)})
    lock(api, "two").acquire()
    assert api.values[LOCK_PARAMETER]["run_id"] == "two"


def test_a_dead_lock_watched_less_than_its_lease_is_refused_naming_how_long() -> None:
    api = Parameters(values={LOCK_PARAMETER: holder_value("one", 1_000_000.0 - 1000, lease=900)})
    with pytest.raises(LockHeld, match=r"looks dead but was watched only 90 s of its 900 s lease"):
        lock(api, "two", wait=90).acquire()
    assert api.values[LOCK_PARAMETER]["run_id"] == "one"


def test_a_run_that_loses_the_race_after_writing_is_refused() -> None:
    api = Parameters()
    api.clocks.on_sleep = [lambda: api.values.update({LOCK_PARAMETER: holder_value("two", 0)})]
    with pytest.raises(LockHeld, match="at the same moment: run two"):
        lock(api, "one").acquire()


@pytest.mark.parametrize("previous", [None, "dead"], ids=["no lock before", "a dead run's lock before"])
def test_an_interrupt_while_the_write_settles_leaves_the_lock_as_it_was(previous: str | None) -> None:
    """Ctrl-C (or SIGTERM, the same KeyboardInterrupt) in the 1.25 s after our write: a run that never
    started must not hold the cluster for a whole lease."""
    api = Parameters()
    before = holder_value("dead", api.clocks.wall - 600) if previous else None
    if before:
        api.values[LOCK_PARAMETER] = before
    taker = lock(api, "one", wait=200)

    def interrupt() -> None:
        if api.values.get(LOCK_PARAMETER, {}).get("run_id") == "one":
            raise KeyboardInterrupt  # the settle after our own write

    api.clocks.on_sleep = [interrupt] * 100  # the watch of a dead lock sleeps a lease away first
    with pytest.raises(KeyboardInterrupt):
        taker.acquire()
    assert api.values.get(LOCK_PARAMETER) == before


def test_a_slow_write_that_lands_during_the_others_settle_leaves_one_holder() -> None:
    """B read "no lock" before A wrote; B's PUT takes 0.8 s (the review's case: longer than the old fixed
    0.5 s settle) and lands while A waits: A reads B's value back and is refused, B holds."""
    shared: dict[str, Any] = {}
    a = Parameters(Clocks(), shared)
    b = Parameters(Clocks(), shared, put_seconds=[0.8], earlier_reads=[None])
    taker_b = lock(b, "two")
    a.clocks.on_sleep = [taker_b.acquire]  # B's write (and its whole take) happens during A's settle
    with pytest.raises(LockHeld, match="at the same moment: run two"):
        lock(a, "one").acquire()
    assert shared[LOCK_PARAMETER]["run_id"] == "two"


def test_a_write_slower_than_the_window_counts_only_after_a_whole_lease_unchanged() -> None:
    """Its value may land after another taker read its own back: that one stops at its next renewal, so
    ours is watched for a lease, then written again (fast this time) and taken."""
    api = Parameters(put_seconds=[WRITE_WINDOW_SECONDS + 0.1])
    lock(api, "one").acquire()
    assert api.clocks.monotonic >= 60 + WRITE_WINDOW_SECONDS
    assert api.values[LOCK_PARAMETER]["run_id"] == "one"
    assert SETTLE_SECONDS > WRITE_WINDOW_SECONDS


def test_a_slow_write_is_refused_when_the_wait_is_shorter_than_a_lease() -> None:
    api = Parameters(put_seconds=[WRITE_WINDOW_SECONDS + 0.1])
    with pytest.raises(
        LockHeld, match=r"writing the cluster's lock took 1.1 s \(more than 1 s\).* watched only"
    ):
        lock(api, "one", wait=10).acquire()
    assert LOCK_PARAMETER not in api.values  # its late value withdrawn: nobody's renewal finds it


def test_a_taker_whose_read_has_aged_reads_again_and_writes_nothing_over_a_new_holder() -> None:
    """Our read (no lock) took 0.6 s, more than half the write window: meanwhile run two took the lock.
    Writing now could land after two read its own value back; we read again, see two, and refuse."""
    api = Parameters(
        values={LOCK_PARAMETER: holder_value("two", 1_000_000.0)}, earlier_reads=[None], read_seconds=0.6
    )
    with pytest.raises(LockHeld, match=r"changed before we wrote .*run two"):
        lock(api, "one").acquire()
    assert api.values[LOCK_PARAMETER]["run_id"] == "two" and api.deadlines == []


def test_a_read_slower_than_the_write_window_is_refused_before_any_write() -> None:
    api = Parameters(read_seconds=1.1)
    with pytest.raises(LockHeld, match=r"reading the cluster's lock took 1.1 s .*nothing written"):
        lock(api, "one").acquire()
    assert LOCK_PARAMETER not in api.values


def test_the_takers_put_gets_what_is_left_of_the_window_and_a_late_landing_is_withdrawn() -> None:
    """The PUT times out at the window's end but the server applied it: the dead holder's value we read
    is put back (only because the lock still holds ours), so no live run is aborted by ours."""
    dead = holder_value("zero", 0)
    api = Parameters(values={LOCK_PARAMETER: dead}, put_seconds=[5.0], timeouts=True, read_seconds=0.2)
    with pytest.raises(ManagementError, match="timed out"):
        lock(api, "one").acquire()
    assert api.deadlines[0] == pytest.approx(WRITE_WINDOW_SECONDS - 0.2)
    assert api.values[LOCK_PARAMETER] == dead


def test_a_late_write_is_not_withdrawn_once_another_run_overwrote_it() -> None:
    api = FailingRenewals()
    mine = LockHolder("tester one", "one", 0, 0, 60)
    api.values[LOCK_PARAMETER] = holder_value("two", 5)
    lock(api, "one")._withdraw(mine, None)
    assert api.values[LOCK_PARAMETER]["run_id"] == "two"


def test_a_renewal_must_end_by_half_the_lease() -> None:
    """Its PUT's deadline (all attempts) is what is left before check() stops the run: no renewal lands
    after another run may have watched the lock for a whole lease."""
    api = Parameters()
    held = lock(api, "one")
    held.acquire()  # began at 0, took the 1.25 s settle
    api.clocks.advance(24)
    held.renew()
    assert api.deadlines[-1] == pytest.approx(30 - 25.25)


def test_holding_makes_the_runs_writer_ask_the_lock_before_every_retry() -> None:
    @dataclass
    class Writer:
        guard: Callable[[], None] | None = None

    api = Parameters()
    writer = Writer()
    held = lock(api, "one")
    with holding(held, writer) as heartbeat:
        assert writer.guard == heartbeat.check
        api.clocks.advance(31)  # no renewal for over half the lease
        with pytest.raises(LockLost):
            writer.guard()
    assert writer.guard is None


def test_a_slow_write_another_run_then_overwrites_is_refused() -> None:
    api = Parameters(put_seconds=[WRITE_WINDOW_SECONDS + 0.1])
    quiet: list[Callable[[], object]] = [lambda: None] * 5
    api.clocks.on_sleep = [*quiet, lambda: api.values.update({LOCK_PARAMETER: holder_value("two", 0)})]
    with pytest.raises(LockHeld, match="changed while we watched it"):
        lock(api, "one").acquire()


def test_a_settle_not_longer_than_the_write_window_is_refused() -> None:
    with pytest.raises(ValueError, match="settle"):
        lock(Parameters(), "one", settle=0.5, write_window=0.5)


class FailingRenewals(Parameters):
    def put_global_parameter(
        self, name: str, value: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        if self.values.get(name, {}).get("run_id") == value["run_id"]:
            raise ManagementError("PUT global-parameters: HTTP 503", status=503)
        super().put_global_parameter(name, value, deadline=deadline)


def test_a_run_whose_renewals_fail_stops_at_half_its_lease_and_stays_stopped() -> None:
    api = FailingRenewals()
    held = lock(api, "one")
    held.acquire()
    heartbeat = Heartbeat(held)
    for _ in range(2):  # renewals 13.75 s and 26.25 s after the take fail: the lease covers them
        api.clocks.advance(12.5)
        with pytest.raises(ManagementError):
            held.renew()
        heartbeat.check()
    api.clocks.advance(4)  # 30.25 s since the take began: more than half the 60 s lease
    with pytest.raises(LockLost, match=r"could not renew the cluster's lock for 30 s"):
        heartbeat.check()
    api.put_global_parameter = Parameters.put_global_parameter.__get__(api)  # type: ignore[method-assign]
    with pytest.raises(LockLost):
        held.renew()  # a late renewal does not bring it back
    with pytest.raises(LockLost):
        heartbeat.check()


def test_a_renewal_slower_than_a_sixth_of_the_lease_does_not_count() -> None:
    """Counted, it could land after another run watched the lock unchanged for a whole lease."""
    api = Parameters()
    held = lock(api, "one")
    held.acquire()
    taken_at = held.renewed_at
    api.clocks.advance(15)
    api.put_seconds.append(10.5)
    held.renew()
    assert held.renewed_at == taken_at
    api.put_seconds.append(5)  # slow, but within a sixth of the 60 s lease: counted
    held.renew()
    assert held.renewed_at is not None and taken_at is not None and held.renewed_at > taken_at


@pytest.mark.parametrize(
    "value", ["garbage", {"run_id": "x"}, {**LockHolder("o", "r", 0, 1e999, 1).to_value()}]
)
def test_a_lock_value_this_version_did_not_write_counts_as_no_lock(value: Any) -> None:
    api = Parameters(values={LOCK_PARAMETER: value})
    lock(api, "one").acquire()


def test_cleanup_removes_only_the_policies_of_dead_runs() -> None:
    cluster = FakeCluster()
    ref = QueueRef("/", "q")
    for run in ("live", "dead", ""):
        cluster.add_policy("/", temporary_policy_name(ref, run), "^q$", {"ha-mode": "all"})
    cluster.add_policy("/", "own", ".*", {"ha-mode": "all"})
    removed = cleanup(cluster, frozenset({"live"}), sleep=lambda _s: None)
    assert sorted(name for _, name in removed.removed) == sorted(
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
    api = Parameters()
    workflow = derived_run_id("execution-1")
    lock(api, workflow).acquire()
    cluster = FakeCluster()
    ref = QueueRef("/", "q")
    cluster.add_policy("/", temporary_policy_name(ref, workflow), "^q$", {"ha-mode": "all"})
    with pytest.raises(LockHeld, match=f"run {workflow} of tester"):
        lock(api, "cli").acquire()
    assert cleanup(cluster, lock(api, "cli").live_runs()).removed == []
