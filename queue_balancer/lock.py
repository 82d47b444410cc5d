"""One lock per cluster, for every run that changes it: CLI and workflow alike.

The lock lives in the cluster itself, as the RabbitMQ global parameter ``queue-balancer-lock`` (the CLI
has no DynamoDB, and any run that can move a queue can reach the management API). Its value names the
holder (owner, run id), when it was taken and its lease (last heartbeat + lease seconds): a holder
that dies leaves a lock that expires by itself. The management API has no compare-and-swap, so a
taker writes, waits ``settle`` seconds and reads back: of two runs writing at once, only the last
writer finds its own value and goes on; the other is refused. A holder renews its lease while it runs
and stops when it finds the lock is no longer its own.
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


class LockHeld(BalancerError):
    """Another live run holds the cluster's lock: this run changed nothing."""


class LockLost(BalancerError):
    """This run's lock expired or was taken over: it must stop changing the cluster."""


class GlobalParameters(Protocol):
    """RabbitMQ's global runtime parameters (``/api/global-parameters``)."""

    def global_parameter(self, name: str) -> dict[str, Any]: ...

    def put_global_parameter(self, name: str, value: Mapping[str, Any]) -> None: ...

    def delete_global_parameter(self, name: str) -> bool: ...


@dataclass(frozen=True)
class LockHolder:
    """Who holds the lock, since when, and until when without a heartbeat."""

    owner: str
    run_id: str
    acquired_at: float
    heartbeat_at: float
    lease_seconds: float

    def expired(self, now: float) -> bool:
        return now > self.heartbeat_at + self.lease_seconds

    def describe(self, now: float) -> str:
        return (
            f"run {self.run_id} of {self.owner}, holding it for {now - self.acquired_at:.0f} s "
            f"(lease ends in {self.heartbeat_at + self.lease_seconds - now:.0f} s unless renewed)"
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
        return holder if finite else None


@dataclass
class ClusterLock:
    """This run's hold on one cluster's lock."""

    api: GlobalParameters
    owner: str
    run_id: str
    lease_seconds: float = 60.0
    settle: float = 0.5
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def holder(self) -> LockHolder | None:
        try:
            return LockHolder.from_value(self.api.global_parameter(LOCK_PARAMETER).get("value"))
        except NotFound:
            return None

    def acquire(self) -> LockHolder:
        """Take the lock, or raise ``LockHeld`` naming the live run that holds it."""
        now = self.clock()
        current = self.holder()
        if current and current.run_id != self.run_id and not current.expired(now):
            raise LockHeld(f"another balancer run holds this cluster: {current.describe(now)}")
        mine = LockHolder(self.owner, self.run_id, now, now, self.lease_seconds)
        self.api.put_global_parameter(LOCK_PARAMETER, mine.to_value())
        self.sleep(self.settle)
        after = self.holder()
        if after is None or after.run_id != self.run_id:
            who = after.describe(self.clock()) if after else "nobody (it was removed)"
            raise LockHeld(f"another balancer run took this cluster at the same moment: {who}")
        return mine

    def renew(self) -> None:
        """Push the lease out; ``LockLost`` if the lock is no longer this run's."""
        current = self.holder()
        if current is None or current.run_id != self.run_id:
            who = current.describe(self.clock()) if current else "nobody"
            raise LockLost(f"run {self.run_id} lost the cluster's lock; it is held by {who}")
        renewed = LockHolder(self.owner, self.run_id, current.acquired_at, self.clock(), self.lease_seconds)
        self.api.put_global_parameter(LOCK_PARAMETER, renewed.to_value())

    def release(self) -> None:
        """Remove the lock if it is still this run's (never another run's)."""
        current = self.holder()
        if current is not None and current.run_id == self.run_id:
            self.api.delete_global_parameter(LOCK_PARAMETER)

    def live_runs(self) -> frozenset[str]:
        """This run and, while its lease lasts, the lock's holder: whose temporary policies are not leftovers."""
        current = self.holder()
        alive = {current.run_id} if current and not current.expired(self.clock()) else set()
        return frozenset({self.run_id, *alive})


@dataclass
class Heartbeat:
    """Renews a held lock every third of its lease on a thread of its own; ``check`` raises what it met."""

    lock: ClusterLock
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _error: BalancerError | None = field(default=None, repr=False)

    def run(self) -> None:
        while not self._stop.wait(self.lock.lease_seconds / 3):
            try:
                self.lock.renew()
            except LockLost as exc:
                self._error = exc
                return
            except BalancerError:
                continue  # the API is down for a moment: the lease covers two more tries

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> None:
        if self._error is not None:
            raise self._error


@contextmanager
def holding(lock: ClusterLock) -> Iterator[Heartbeat]:
    """Hold the lock (renewed in the background) for the block; released however the block ends."""
    lock.acquire()
    heartbeat = Heartbeat(lock)
    thread = threading.Thread(target=heartbeat.run, name="queue-balancer-lock", daemon=True)
    thread.start()
    try:
        yield heartbeat
    finally:
        heartbeat.stop()
        thread.join(timeout=5)
        with suppress(BalancerError):  # the lease ends by itself
            lock.release()
