"""One lock per cluster, for every run that changes it: CLI and workflow alike.

The lock lives in the cluster itself, as the RabbitMQ global parameter ``queue-balancer-lock`` (the CLI
has no DynamoDB, and any run that can move a queue can reach the management API). Its value names the
holder (owner, run id), when it was taken and its lease. The management API has no compare-and-swap, and
two machines' clocks never agree exactly, so the lock rests on three rules that need neither:

- **Taking**: read, write, wait ``settle``, read back. A write counts only if our read -> write took at
  most ``write_window``; since ``settle`` is longer, any other taker's write that counts lands before our
  read-back, so of two runs writing at once only the last writer finds its own value and goes on. A slower
  write may have landed after another taker read its own value back: it counts only once its value has
  stayed unchanged for a whole lease (the other taker stopped at its next renewal), then it is written again.
- **Expiry** is observed, never computed from the holder's clock: another run's lock is taken over only
  after this process has seen its value unchanged for the whole lease on its own monotonic clock (a live
  holder renews every third of its lease, so its value changes). The holder's recorded times are only
  used to refuse at once while the lock looks alive by them (refusing is always safe).
- **Renewals**: a holder whose renewals fail (the API unreachable, a call hanging) stops changing the
  cluster once its last successful renewal is older than half its lease, well before anyone else may
  have watched the lock for a whole lease.
- **No late writes**: every write of the lock ends (all attempts) by the run's half-lease point, and
  ``holding`` (``guarding``) makes the run's management client start no write, and retry none, once
  ``check`` fails (the client's own total deadline per write, ``management.WRITE_DEADLINE_SECONDS``,
  covers the rest). A workflow slice guards its client the same way with its run's lock. A taker whose write
  came too late puts back the value it replaced, only while the lock still holds its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from queue_balancer.errors import BalancerError, NotFound

LOCK_PARAMETER = "queue-balancer-lock"

WRITE_WINDOW_SECONDS = 1.0
"""The longest read -> write of a taker that may still take the lock (a loopback or in-VPC PUT takes
milliseconds)."""

SETTLE_SECONDS = WRITE_WINDOW_SECONDS + 0.25
"""Wait between our write and its read-back: longer than any other taker's counted read -> write."""


class LockHeld(BalancerError):
    """Another live run holds the cluster's lock: this run changed nothing."""


class LockLost(BalancerError):
    """This run's lock expired or was taken over: it must stop changing the cluster."""


class GlobalParameters(Protocol):
    """RabbitMQ's global runtime parameters (``/api/global-parameters``)."""

    def global_parameter(self, name: str) -> dict[str, Any]: ...

    def put_global_parameter(
        self, name: str, value: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        """``deadline``: seconds for all attempts together (the client's default when None)."""

    def delete_global_parameter(self, name: str) -> bool: ...


@dataclass(frozen=True)
class LockHolder:
    """Who holds the lock, since when and its last heartbeat (by the holder's clock), and its lease."""

    owner: str
    run_id: str
    acquired_at: float
    heartbeat_at: float
    lease_seconds: float

    def looks_alive(self, now: float) -> bool:
        """Alive by the holder's own times, read with our wall clock: enough to refuse, never to take over
        (a heartbeat from more than a lease in our future is a skewed clock, not a sign of life)."""
        return self.heartbeat_at - self.lease_seconds <= now <= self.heartbeat_at + self.lease_seconds

    def describe(self, now: float) -> str:
        return (
            f"run {self.run_id} of {self.owner}, holding it for {now - self.acquired_at:.0f} s "
            f"(lease {self.lease_seconds:.0f} s, renewed as it runs)"
        )

    def to_value(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "run_id": self.run_id,
            "acquired_at": self.acquired_at,
            "heartbeat_at": self.heartbeat_at,
            "lease_seconds": self.lease_seconds,
        }

    @classmethod
    def from_value(cls, value: Any) -> LockHolder | None:
        """None for a value this version did not write (it is then treated as no lock at all)."""
        try:
            holder = cls(
                owner=str(value["owner"]),
                run_id=str(value["run_id"]),
                acquired_at=float(value["acquired_at"]),
                heartbeat_at=float(value["heartbeat_at"]),
                lease_seconds=float(value["lease_seconds"]),
            )
        except (TypeError, KeyError, ValueError):
            return None
        finite = all(
            math.isfinite(x) for x in (holder.acquired_at, holder.heartbeat_at, holder.lease_seconds)
        )
        return holder if finite and holder.lease_seconds > 0 else None


@dataclass
class ClusterLock:
    """This run's hold on one cluster's lock.

    ``wait`` bounds how long ``acquire`` watches another run's lock that looks dead before refusing; it
    is taken over only once seen unchanged for its whole lease within that time.
    """

    api: GlobalParameters
    owner: str
    run_id: str
    lease_seconds: float = 60.0
    wait: float = 90.0
    poll: float = 1.0
    write_window: float = WRITE_WINDOW_SECONDS
    settle: float = SETTLE_SECONDS
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    renewed_at: float | None = field(default=None, init=False)
    """When (``clock``) the last successful take or renewal of this process began."""

    def __post_init__(self) -> None:
        if self.settle <= self.write_window:
            raise ValueError(f"settle ({self.settle} s) must exceed write_window ({self.write_window} s)")

    def _read(self) -> Any:
        try:
            return self.api.global_parameter(LOCK_PARAMETER).get("value")
        except NotFound:
            return None

    def holder(self) -> LockHolder | None:
        return LockHolder.from_value(self._read())

    def acquire(self) -> LockHolder:
        """Take the lock, or raise ``LockHeld`` naming the live run that holds it."""
        started = self.clock()
        read_at = started
        seen = self._read()
        current = LockHolder.from_value(seen)
        if current is not None and current.run_id != self.run_id:
            if current.looks_alive(self.wall_clock()):
                raise LockHeld(
                    f"another balancer run holds this cluster: {current.describe(self.wall_clock())}"
                )
            read_at = self._watch_unchanged(
                seen,
                current.lease_seconds,
                started,
                f"another balancer run holds this cluster: {current.describe(self.wall_clock())}; its lock "
                "looks dead but",
            )
        while True:
            read_at, seen = self._fresh(read_at, seen)
            now = self.wall_clock()
            mine = LockHolder(self.owner, self.run_id, now, now, self.lease_seconds)
            try:
                self.api.put_global_parameter(
                    LOCK_PARAMETER, mine.to_value(), deadline=self.write_window - (self.clock() - read_at)
                )
            except BaseException:
                # A timed-out PUT may still have landed, and so may one cut off by Ctrl-C or SIGTERM.
                self._withdraw(mine, seen)
                raise
            took = self.clock() - read_at
            if took <= self.write_window:
                break
            # Our write may have landed after another taker read its own value back: put back what it
            # replaced (that taker's renewal must not find ours); the value we read counts once unchanged
            # for a whole lease, as a dead holder's does.
            self._withdraw(mine, seen)
            read_at = self._watch_unchanged(
                seen,
                self.lease_seconds,
                started,
                f"writing the cluster's lock took {took:.1f} s (more than {self.write_window:g} s), so "
                "another run may have taken it meanwhile (our write was withdrawn); the lock",
            )
        try:
            self.sleep(self.settle)
            after = self.holder()
        except BaseException:
            self._withdraw(mine, seen)  # interrupted (Ctrl-C, SIGTERM) after our write: leave no lock behind
            raise
        if after is None or after.run_id != self.run_id:
            who = after.describe(self.wall_clock()) if after else "nobody (it was removed)"
            raise LockHeld(f"another balancer run took this cluster at the same moment: {who}")
        self.renewed_at = read_at
        return mine

    def _fresh(self, read_at: float, seen: Any) -> tuple[float, Any]:
        """The read our write follows: ``seen`` while it is young enough, else read again (half the
        write window gone: the PUT would likely end past it); ``LockHeld`` when the value changed or even
        a fresh read leaves no time to write (nothing is written then)."""
        if self.clock() - read_at <= self.write_window / 2:
            return read_at, seen
        read_at = self.clock()
        again = self._read()
        if again != seen:
            holder = LockHolder.from_value(again)
            who = holder.describe(self.wall_clock()) if holder else "nobody (it was removed)"
            raise LockHeld(
                f"another balancer run holds this cluster: its lock changed before we wrote ({who})"
            )
        if self.clock() - read_at >= self.write_window:
            raise LockHeld(
                f"reading the cluster's lock took {self.clock() - read_at:.1f} s (more than "
                f"{self.write_window:g} s): too slow to take it safely; nothing written"
            )
        return read_at, seen

    def _withdraw(self, mine: LockHolder, previous: Any) -> None:
        """Put back the value our late write replaced (``previous``), only while the lock holds ours."""
        with suppress(BalancerError):
            if self.holder() != mine:
                return
            if isinstance(previous, Mapping):
                self.api.put_global_parameter(LOCK_PARAMETER, previous, deadline=self.write_window)
            else:
                self.api.delete_global_parameter(LOCK_PARAMETER)

    def _watch_unchanged(self, seen: Any, lease: float, started: float, what: str) -> float:
        """Return once ``seen`` has stayed the lock's value for ``lease`` seconds (the start time of the
        last read); ``LockHeld`` when it changes (someone holds it) or ``wait`` runs out first."""
        watched_from = self.clock()  # the value was there by now
        while True:
            unchanged = self.clock() - watched_from
            if self.clock() - started + self.poll > self.wait and unchanged < lease:
                raise LockHeld(
                    f"{what} was watched only {unchanged:.0f} s of its {lease:.0f} s lease (a lock unchanged "
                    "for its whole lease is taken over); nothing changed"
                )
            self.sleep(self.poll)
            read_at = self.clock()
            if self._read() != seen:
                holder = self.holder()
                who = holder.describe(self.wall_clock()) if holder else "nobody (it was removed)"
                raise LockHeld(
                    f"another balancer run holds this cluster: its lock changed while we watched it ({who})"
                )
            if self.clock() - watched_from >= lease:
                return read_at

    def renew(self) -> None:
        """Push the lease out; ``LockLost`` if the lock is no longer this run's, or if this run went
        longer than half its lease without a successful renewal (another run may be watching it die)."""
        started = self.clock()
        current = self.holder()
        if current is None or current.run_id != self.run_id:
            who = current.describe(self.wall_clock()) if current else "nobody"
            raise LockLost(f"run {self.run_id} lost the cluster's lock; it is held by {who}")
        self.check()
        renewed = LockHolder(
            self.owner, self.run_id, current.acquired_at, self.wall_clock(), self.lease_seconds
        )
        self.api.put_global_parameter(LOCK_PARAMETER, renewed.to_value(), deadline=self.time_left())
        # Counted only if it took under half the lease minus the gap allowed before it: then it cannot land
        # after another run has watched the lock unchanged for a whole lease.
        if self.clock() - started <= self.lease_seconds / 6:
            self.renewed_at = started

    def time_left(self) -> float | None:
        """Seconds until ``check`` fails: a write of this lock must end by then (None: not yet taken)."""
        if self.renewed_at is None:
            return None
        return max(self.lease_seconds / 2 - (self.clock() - self.renewed_at), 0.001)

    def check(self) -> None:
        """``LockLost`` once the last successful take or renewal is older than half the lease."""
        if self.renewed_at is None:
            return  # not taken yet: nothing to stop
        silent = self.clock() - self.renewed_at
        if silent > self.lease_seconds / 2:
            raise LockLost(
                f"run {self.run_id} could not renew the cluster's lock for {silent:.0f} s (over half its "
                f"{self.lease_seconds:.0f} s lease): it stops changing the cluster"
            )

    def release(self) -> None:
        """Remove the lock if it is still this run's (never another run's)."""
        current = self.holder()
        if current is not None and current.run_id == self.run_id:
            self.api.delete_global_parameter(LOCK_PARAMETER)

    def live_runs(self) -> frozenset[str]:
        """This run and the lock's holder, however old its heartbeat: whose temporary policies are not
        leftovers (a holder stops being live only when a run takes its lock over)."""
        current = self.holder()
        return frozenset({self.run_id, *([current.run_id] if current else [])})


@dataclass
class Heartbeat:
    """Renews a held lock every third of its lease on a thread of its own; ``check`` raises what it met,
    or ``LockLost`` once renewals have failed for half the lease (the run must stop changing the cluster)."""

    lock: ClusterLock
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _error: BalancerError | None = field(default=None, repr=False)

    def run(self) -> None:
        while not self._stop.wait(self.lock.lease_seconds / 6):
            if self.lock.renewed_at is not None and (
                self.lock.clock() - self.lock.renewed_at < self.lock.lease_seconds / 3
            ):
                continue
            try:
                self.lock.renew()
            except LockLost as exc:
                self._error = exc
                return
            except BalancerError:
                continue  # the API is down for a moment: tried again soon; check() stops the run at lease/2

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> None:
        if self._error is None:
            try:
                self.lock.check()
            except LockLost as exc:
                self._error = exc  # for good: a late renewal must not bring a stopped run back
        if self._error is not None:
            raise self._error


class Guarded(Protocol):
    """A client that asks ``guard`` before every attempt of a write (``ManagementClient``)."""

    guard: Callable[[], None] | None


@contextmanager
def guarding(writer: Guarded | None, check: Callable[[], None]) -> Iterator[None]:
    """``writer`` makes no write (no first attempt, no retry) once ``check`` fails, for the block: a write
    begun after the lock's safe part of its lease could land after a takeover."""
    if writer is None:
        yield
        return
    writer.guard = check
    try:
        yield
    finally:
        writer.guard = None


@contextmanager
def holding(lock: ClusterLock, writer: Guarded | None = None) -> Iterator[Heartbeat]:
    """Hold the lock (renewed in the background) for the block; released however the block ends.
    ``writer``, the client the run changes the cluster through, makes no write once the lock's
    ``check`` fails (``guarding``)."""
    lock.acquire()
    heartbeat = Heartbeat(lock)
    thread = threading.Thread(target=heartbeat.run, name="queue-balancer-lock", daemon=True)
    thread.start()
    try:
        with guarding(writer, heartbeat.check):
            yield heartbeat
    finally:
        heartbeat.stop()
        thread.join(timeout=5)
        with suppress(BalancerError):  # the lease ends by itself
            lock.release()
