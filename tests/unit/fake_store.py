"""An in-memory ``LifecycleStore`` with the DynamoDB store's conditions (``lambdas.store.Store``).

The lifecycle item is kept in its stored form (``Lifecycle.to_item``) and a save writes only the fields
that changed, under the same conditions as the real one: the item must still belong to the run
(``LockLost`` otherwise) and, when a request is consumed, the request must be the one read
(``RequestChanged``). Meta fields go through the contract's encoding, as in the table.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

from queue_balancer.contract import PlanKind, decode_meta_item, encode_meta
from queue_balancer.lifecycle import Lifecycle
from queue_balancer.lock import LockLost
from queue_balancer.member_moves import MemberBatch, MemberProgress
from queue_balancer.members import MemberMove
from queue_balancer.model import JsonDict, Move
from queue_balancer.movers import MoveProgress
from queue_balancer.runner import BatchState
from queue_balancer.workflow.ports import RequestChanged

BatchKey = tuple[str, int, int]


class FakeStore:
    def __init__(self) -> None:
        self.items: dict[str, JsonDict] = {}
        """The lifecycle item of each cluster, as stored."""
        self.locks: dict[str, JsonDict] = {}
        self.metas: dict[str, JsonDict] = {}
        self.batches: dict[BatchKey, list[Move | MemberMove]] = {}
        self.kinds: dict[BatchKey, PlanKind] = {}
        self.progress: dict[BatchKey, BatchState | MemberBatch] = {}
        self.stored_results: dict[BatchKey, list[MoveProgress | MemberProgress]] = {}

    # ---- set-up -------------------------------------------------------------------------------------

    def hold_lock(self, cluster: str, run_id: str, expires_at: int = 0) -> None:
        self.locks[cluster] = {"run_id": run_id, "execution_arn": "", "expires_at": expires_at}

    # ---- LifecycleStore -----------------------------------------------------------------------------

    def lifecycle(self, cluster: str) -> Lifecycle:
        return Lifecycle.from_item(self.items.get(cluster), cluster)

    def start(self, record: Lifecycle) -> None:
        self.items[record.cluster] = record.to_item()

    def save(
        self,
        before: Lifecycle,
        after: Lifecycle,
        *,
        expect_requested: bool = False,
        expect_state: bool = False,
    ) -> None:
        old, new = before.to_item(), after.to_item()
        if old == new:
            return
        stored = self.items.get(after.cluster, {})
        owner = before.run_id or after.run_id
        if stored.get("run_id") != owner:
            raise LockLost(f"the lifecycle of cluster {after.cluster} belongs to run {stored.get('run_id')}")
        if expect_state and (stored.get("state"), stored.get("ending")) != (
            old.get("state"),
            old.get("ending"),
        ):
            raise LockLost(f"the lifecycle of run {owner} is {stored.get('state')} now, not {before.state}")
        if expect_requested and stored.get("requested") != old.get("requested"):
            raise RequestChanged(f"the request for run {owner} changed while it was being honoured")
        for key in old.keys() - new.keys():
            stored.pop(key, None)
        stored.update({k: v for k, v in new.items() if old.get(k) != v})
        self.items[after.cluster] = stored

    def renew_lock(self, cluster: str, run_id: str, execution_arn: str, expires_at: int) -> None:
        lock = self.locks.get(cluster)
        if lock is None or lock["run_id"] != run_id:
            raise LockLost(f"run {run_id} no longer holds the lock of cluster {cluster}")
        lock.update(execution_arn=execution_arn, expires_at=expires_at)

    def lock(self, cluster: str) -> JsonDict | None:
        return self.locks.get(cluster)

    def release_lock(self, cluster: str, run_id: str) -> bool:
        if (self.locks.get(cluster) or {}).get("run_id") != run_id:
            return False
        del self.locks[cluster]
        return True

    def put_meta(self, run_id: str, **fields: Any) -> None:
        self.metas.setdefault(run_id, {}).update({k: encode_meta(v) for k, v in fields.items()})

    def meta(self, run_id: str) -> JsonDict:
        return decode_meta_item(self.metas.get(run_id))

    def put_plan(
        self,
        run_id: str,
        generation: int,
        batches: Sequence[Sequence[Move | MemberMove]],
        kind: PlanKind = PlanKind.LEADERS,
    ) -> None:
        for index, moves in enumerate(batches):
            self.batches[(run_id, generation, index)] = list(moves)
            self.kinds[(run_id, generation, index)] = kind

    def batch_state(self, run_id: str, generation: int, index: int) -> BatchState:
        key = self._key(run_id, generation, index, PlanKind.LEADERS)
        if key in self.progress:
            return BatchState.from_dict(self.progress[key].to_dict())
        return BatchState(pending=[m for m in self.batches[key] if isinstance(m, Move)])

    def member_batch(self, run_id: str, generation: int, index: int) -> MemberBatch:
        key = self._key(run_id, generation, index, PlanKind.MEMBERS)
        if key in self.progress:
            return MemberBatch.from_dict(self.progress[key].to_dict())
        return MemberBatch(pending=[m for m in self.batches[key] if isinstance(m, MemberMove)])

    def save_batch_state(
        self, run_id: str, generation: int, index: int, state: BatchState | MemberBatch
    ) -> None:
        copy = type(state).from_dict(state.to_dict())  # as stored: JSON, not the caller's object
        self.progress[(run_id, generation, index)] = copy

    def record_results(
        self,
        run_id: str,
        generation: int,
        index: int,
        results: Sequence[MoveProgress | MemberProgress],
    ) -> None:
        self.stored_results[(run_id, generation, index)] = list(results)

    def results(self, run_id: str) -> list[MoveProgress]:
        return [p for p in self._results(run_id) if isinstance(p, MoveProgress)]

    def member_results(self, run_id: str) -> list[MemberProgress]:
        return [p for p in self._results(run_id) if isinstance(p, MemberProgress)]

    def _results(self, run_id: str) -> list[MoveProgress | MemberProgress]:
        return [
            p for key in sorted(self.stored_results) if key[0] == run_id for p in self.stored_results[key]
        ]

    def _key(self, run_id: str, generation: int, index: int, kind: PlanKind) -> BatchKey:
        key = (run_id, generation, index)
        if key not in self.batches:
            raise KeyError(f"batch {index} of plan {generation} of run {run_id} is not stored")
        if self.kinds[key] is not kind:
            raise KeyError(f"batch {index} of plan {generation} of run {run_id} holds {self.kinds[key]}")
        return key

    def delete_run(self, run_id: str) -> int:
        count = int(self.metas.pop(run_id, None) is not None)
        tables: list[MutableMapping[BatchKey, Any]] = [
            self.batches,
            self.kinds,
            self.progress,
            self.stored_results,
        ]
        for table in tables:
            for key in [k for k in table if k[0] == run_id]:
                del table[key]
                count += 1
        return count
