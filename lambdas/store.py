"""The DynamoDB side of a run: the cluster's lifecycle item and lock, the run's plan batches and report.

The key layout is ``queue_balancer.contract``'s (one module for the ASL, the stacks and the code).

Moves, results and reports are stored as JSON strings: they hold floats, which DynamoDB's number type
would need as Decimal, and nothing ever queries inside them. Run items carry ``expires_at`` (epoch
seconds, 90 days on), the table's time-to-live attribute; so does the lock (its lease), which DynamoDB
may then delete once expired, as the conditions already treat it. The lifecycle item never expires.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from queue_balancer.contract import (
    EXPIRES_AT,
    PARTITION_KEY,
    PLAN_KIND,
    SORT_KEY,
    PlanKind,
    batch_key,
    decode_meta_item,
    encode_meta,
    is_batch_sk,
    lifecycle_key,
    lock_key,
    run_meta_key,
    run_pk,
)
from queue_balancer.lifecycle import Lifecycle
from queue_balancer.lock import LockLost
from queue_balancer.member_moves import MemberBatch, MemberProgress
from queue_balancer.members import MemberMove
from queue_balancer.model import JsonDict, Move
from queue_balancer.movers import MoveProgress
from queue_balancer.runner import BatchState
from queue_balancer.workflow.ports import RequestChanged

RUN_ITEM_DAYS = 90


class Store:
    """Reads and conditional writes of one lifecycle table."""

    def __init__(self, table_name: str, *, resource: Any = None) -> None:
        self.table = (resource or boto3.resource("dynamodb")).Table(table_name)

    # ---- lifecycle -----------------------------------------------------------------------------

    def lifecycle(self, cluster: str) -> Lifecycle:
        item = self.table.get_item(Key=lifecycle_key(cluster), ConsistentRead=True)
        return Lifecycle.from_item(item.get("Item"), cluster)

    def start(self, record: Lifecycle) -> None:
        """The first write of a run (it holds the lock): replaces whatever the last run left."""
        self.table.put_item(Item=record.to_item())

    def save(
        self,
        before: Lifecycle,
        after: Lifecycle,
        *,
        expect_requested: bool = False,
        expect_state: bool = False,
    ) -> None:
        """Write the fields that changed, only while the item still belongs to ``after.run_id``.

        Fields this run did not change are left alone, so a request the CLI records meanwhile survives.
        With ``expect_requested`` the write also requires the pending request to be what ``before`` saw
        (used when the run consumes a request); with ``expect_state``, its state and ``ending`` (a
        slice's writes: never onto a run that ended or is being ended meanwhile). Raises LockLost when
        the item belongs to another run or, with ``expect_state``, is no longer in that state.
        """
        old, new = before.to_item(), after.to_item()
        sets = {k: v for k, v in new.items() if k not in (PARTITION_KEY, SORT_KEY) and old.get(k) != v}
        removes = [k for k in old if k not in new]
        if not sets and not removes:
            return
        names = {f"#{k}": k for k in [*sets, *removes, "run_id"]}
        values: dict[str, Any] = {f":{k}": v for k, v in sets.items()}
        values[":owner"] = before.run_id or after.run_id
        condition = "#run_id = :owner"
        if expect_requested:
            names["#requested"] = "requested"
            if before.requested is None:
                condition += " AND attribute_not_exists(#requested)"
            else:
                values[":was_requested"] = before.requested.value
                condition += " AND #requested = :was_requested"
        if expect_state:
            names.update({"#state": "state", "#ending": "ending"})
            values[":was_state"] = before.state.value
            condition += " AND #state = :was_state"
            if before.ending is None:
                condition += " AND attribute_not_exists(#ending)"
            else:
                values[":was_ending"] = before.ending
                condition += " AND #ending = :was_ending"
        expression = ""
        if sets:
            expression += "SET " + ", ".join(f"#{k} = :{k}" for k in sets)
        if removes:
            expression += " REMOVE " + ", ".join(f"#{k}" for k in removes)
        try:
            self.table.update_item(
                Key=lifecycle_key(after.cluster),
                UpdateExpression=expression.strip(),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if not _conditional(exc):
                raise
            now = self.lifecycle(after.cluster)
            owner = now.run_id
            if (
                expect_state
                and owner == values[":owner"]
                and (now.state, now.ending)
                != (
                    before.state,
                    before.ending,
                )
            ):
                raise LockLost(
                    f"the lifecycle of run {owner} is {now.state}"
                    + (f", being ended ({now.ending})" if now.ending else "")
                    + f" now, not {before.state}"
                ) from exc
            if expect_requested and owner == values[":owner"]:
                raise RequestChanged(
                    f"the request for run {owner} changed while it was being honoured"
                ) from exc
            raise LockLost(
                f"the lifecycle of cluster {after.cluster} belongs to run {owner}, not {values[':owner']}"
            ) from exc

    # ---- lock ----------------------------------------------------------------------------------

    def renew_lock(self, cluster: str, run_id: str, execution_arn: str, expires_at: int) -> None:
        """Push the lock's expiry out; LockLost if it is no longer this run's."""
        try:
            self.table.update_item(
                Key=lock_key(cluster),
                UpdateExpression="SET expires_at = :expires, execution_arn = :execution",
                ConditionExpression="run_id = :run",
                ExpressionAttributeValues={
                    ":expires": expires_at,
                    ":execution": execution_arn,
                    ":run": run_id,
                },
            )
        except ClientError as exc:
            if _conditional(exc):
                raise LockLost(f"run {run_id} no longer holds the lock of cluster {cluster}") from exc
            raise

    def lock(self, cluster: str) -> JsonDict | None:
        item = self.table.get_item(Key=lock_key(cluster), ConsistentRead=True)
        found: JsonDict | None = item.get("Item")
        return found

    def release_lock(self, cluster: str, run_id: str) -> bool:
        try:
            self.table.delete_item(
                Key=lock_key(cluster),
                ConditionExpression="run_id = :run",
                ExpressionAttributeValues={":run": run_id},
            )
        except ClientError as exc:
            if _conditional(exc):
                return False  # no lock, or another run's: not ours to release
            raise
        return True

    # ---- the run's plan and results --------------------------------------------------------------

    def put_meta(self, run_id: str, **fields: Any) -> None:
        """Set fields of the run's meta item (JSON-encoded, except plain strings and ints)."""
        names = {f"#{k}": k for k in [*fields, EXPIRES_AT]}
        values = {f":{k}": encode_meta(v) for k, v in fields.items()}
        values[f":{EXPIRES_AT}"] = _ttl()
        self.table.update_item(
            Key=run_meta_key(run_id),
            UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in [*fields, EXPIRES_AT]),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def meta(self, run_id: str) -> JsonDict:
        item = self.table.get_item(Key=run_meta_key(run_id), ConsistentRead=True)
        return decode_meta_item(item.get("Item"))

    def put_plan(
        self,
        run_id: str,
        generation: int,
        batches: Sequence[Sequence[Move | MemberMove]],
        kind: PlanKind = PlanKind.LEADERS,
    ) -> None:
        ttl = _ttl()
        with self.table.batch_writer() as writer:
            for index, moves in enumerate(batches):
                writer.put_item(
                    Item={
                        **batch_key(run_id, generation, index),
                        "moves": json.dumps([m.to_dict() for m in moves], ensure_ascii=False),
                        PLAN_KIND: kind.value,
                        EXPIRES_AT: ttl,
                    }
                )

    def batch_state(self, run_id: str, generation: int, index: int) -> BatchState:
        """Where a batch of leader moves stands: its stored progress, or all of its moves still to start."""
        progress, moves = self._batch(run_id, generation, index, PlanKind.LEADERS)
        if progress is not None:
            return BatchState.from_dict(progress)
        return BatchState(pending=[Move.from_dict(m) for m in moves])

    def member_batch(self, run_id: str, generation: int, index: int) -> MemberBatch:
        """Where a batch of member changes stands: its stored progress, or all of its changes to start."""
        progress, moves = self._batch(run_id, generation, index, PlanKind.MEMBERS)
        if progress is not None:
            return MemberBatch.from_dict(progress)
        return MemberBatch(pending=[MemberMove.from_dict(m) for m in moves])

    def save_batch_state(
        self, run_id: str, generation: int, index: int, state: BatchState | MemberBatch
    ) -> None:
        """Keep an unfinished batch's progress for the next slice (idempotent)."""
        self.table.update_item(
            Key=batch_key(run_id, generation, index),
            UpdateExpression="SET progress = :progress",
            ExpressionAttributeValues={":progress": json.dumps(state.to_dict(), ensure_ascii=False)},
        )

    def record_results(
        self,
        run_id: str,
        generation: int,
        index: int,
        results: Sequence[MoveProgress | MemberProgress],
    ) -> None:
        """Store the final state of a batch's moves (idempotent: a retry writes the same)."""
        self.table.update_item(
            Key=batch_key(run_id, generation, index),
            UpdateExpression="SET results = :results",
            ExpressionAttributeValues={
                ":results": json.dumps([p.to_dict() for p in results], ensure_ascii=False)
            },
        )

    def results(self, run_id: str) -> list[MoveProgress]:
        """Every recorded leader move of the run, in plan and batch order."""
        return [MoveProgress.from_dict(p) for p in self._results(run_id, PlanKind.LEADERS)]

    def member_results(self, run_id: str) -> list[MemberProgress]:
        """Every recorded member change of the run (``members: true``), in plan and batch order."""
        return [MemberProgress.from_dict(p) for p in self._results(run_id, PlanKind.MEMBERS)]

    def _batch(
        self, run_id: str, generation: int, index: int, kind: PlanKind
    ) -> tuple[JsonDict | None, list[JsonDict]]:
        """A batch item's stored progress (None before its first slice) and its moves, of ``kind``."""
        item = self.table.get_item(Key=batch_key(run_id, generation, index), ConsistentRead=True).get("Item")
        if item is None:
            raise KeyError(f"batch {index} of plan {generation} of run {run_id} is not stored")
        stored = PlanKind(str(item.get(PLAN_KIND, PlanKind.LEADERS)))
        if stored is not kind:
            raise KeyError(f"batch {index} of plan {generation} of run {run_id} holds {stored}, not {kind}")
        progress = json.loads(str(item["progress"])) if "progress" in item else None
        return progress, json.loads(str(item["moves"]))

    def _results(self, run_id: str, kind: PlanKind) -> list[JsonDict]:
        return [
            p
            for item in self._run_items(run_id)
            if is_batch_sk(str(item[SORT_KEY]))
            and "results" in item
            and item.get(PLAN_KIND, PlanKind.LEADERS) == kind
            for p in json.loads(item["results"])
        ]

    def delete_run(self, run_id: str) -> int:
        """Remove every item of the run (``reset``); returns how many."""
        keys = [{k: item[k] for k in (PARTITION_KEY, SORT_KEY)} for item in self._run_items(run_id)]
        with self.table.batch_writer() as writer:
            for key in keys:
                writer.delete_item(Key=key)
        return len(keys)

    def _run_items(self, run_id: str) -> Iterator[Mapping[str, Any]]:
        query: dict[str, Any] = {
            "KeyConditionExpression": Key(PARTITION_KEY).eq(run_pk(run_id)),
            "ConsistentRead": True,
        }
        while True:
            page = self.table.query(**query)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _conditional(exc: ClientError) -> bool:
    return bool(exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


def _ttl() -> int:
    return int(time.time()) + RUN_ITEM_DAYS * 86_400
