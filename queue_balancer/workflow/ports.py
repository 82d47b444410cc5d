"""What the workflow's tasks need from the outside, as small protocols: the unit tier swaps in fakes.

``LifecycleStore`` is the DynamoDB side of a run (``lambdas.store.Store`` implements it); ``ClusterApi``
is the part of the management API the tasks use beyond a move's (``ManagementClient`` implements it);
``ClosableCounter`` counts messages exactly and is closed when the handler is done (``AmqpCounter``).
``lambdas.common`` hands them out, and ``lambdas.common.inject`` lets a test put fakes in their place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from queue_balancer.batch_run import BatchStore
from queue_balancer.contract import PlanKind
from queue_balancer.errors import BalancerError
from queue_balancer.lifecycle import Lifecycle
from queue_balancer.lock import GlobalParameters
from queue_balancer.member_moves import MemberProgress
from queue_balancer.members import MemberMove
from queue_balancer.model import JsonDict, Move, Snapshot
from queue_balancer.movers import MoveProgress
from queue_balancer.movers.ports import ManagementApi, MessageCounter


class RequestChanged(BalancerError):
    """An operator's request changed while the run was consuming it: decide again with the new one."""


class LifecycleStore(BatchStore, Protocol):
    """The cluster's lifecycle item and lock, and the run's plan batches, results and report (a slice's
    reads and writes are ``BatchStore``'s, the core's port)."""

    def start(self, record: Lifecycle) -> None: ...

    def renew_lock(self, cluster: str, run_id: str, execution_arn: str, expires_at: int) -> None: ...

    def lock(self, cluster: str) -> JsonDict | None: ...

    def release_lock(self, cluster: str, run_id: str) -> bool:
        """Delete the lock if ``run_id`` holds it (what the ASL's ReleaseLock does); False otherwise."""
        ...

    def put_meta(self, run_id: str, **fields: Any) -> None: ...

    def meta(self, run_id: str) -> JsonDict: ...

    def put_plan(
        self,
        run_id: str,
        generation: int,
        batches: Sequence[Sequence[Move | MemberMove]],
        kind: PlanKind = PlanKind.LEADERS,
    ) -> None: ...

    def results(self, run_id: str) -> list[MoveProgress]: ...

    def member_results(self, run_id: str) -> list[MemberProgress]: ...

    def delete_run(self, run_id: str) -> int: ...


class ClusterApi(ManagementApi, GlobalParameters, Protocol):
    """The management API as the handlers use it: a move's calls, the overview and a snapshot."""

    guard: Callable[[], None] | None
    """Asked before every write (``lock.Guarded``): a RunBatch slice's lease gate."""

    def overview(self) -> dict[str, Any]: ...

    def snapshot(self) -> Snapshot: ...

    def members_snapshot(self) -> Snapshot: ...


class ClosableCounter(MessageCounter, Protocol):
    def close(self) -> None: ...
