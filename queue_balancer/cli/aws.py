"""The AWS gateway of the workflow commands: the lifecycle table (DynamoDB), the state machine (Step
Functions) and the schedule (EventBridge) of one cluster's workflow, each event one AWS call.

Writes are conditional on the lifecycle item as it was read, so a command racing the run is refused with a
line to try again instead of overwriting what the run wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from queue_balancer.contract import decode_meta_item, lifecycle_key, lock_key, run_meta_key
from queue_balancer.errors import BalancerError
from queue_balancer.lifecycle import (
    Control,
    Event,
    EventRefused,
    Lifecycle,
    RunInput,
    State,
)

ENDED = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})


class WorkflowError(BalancerError):
    """The workflow could not be reached or did not do what was asked; the message says which and why."""


@dataclass(frozen=True)
class Workflow:
    """The deployed (or local) workflow of one cluster: its outputs and the AWS clients to reach it."""

    outputs: Mapping[str, str]
    session: Any
    endpoint_url: str | None
    label: str

    @functools.cached_property
    def sfn(self) -> Any:
        return self.session.client("stepfunctions", endpoint_url=self.endpoint_url)

    @functools.cached_property
    def table(self) -> Any:
        return self.session.resource("dynamodb", endpoint_url=self.endpoint_url).Table(
            self.outputs["LifecycleTableName"]
        )

    @functools.cached_property
    def events(self) -> Any:
        return self.session.client("events", endpoint_url=self.endpoint_url)

    @property
    def cluster(self) -> str:
        return self.outputs["ClusterName"]

    @property
    def state_machine_arn(self) -> str:
        return self.outputs["StateMachineArn"]

    # ---- reads -----------------------------------------------------------------------------------

    def lifecycle(self) -> Lifecycle:
        item = self.table.get_item(Key=lifecycle_key(self.cluster), ConsistentRead=True)
        return Lifecycle.from_item(item.get("Item"), self.cluster)

    def lock(self) -> dict[str, Any] | None:
        item = self.table.get_item(Key=lock_key(self.cluster), ConsistentRead=True)
        found: dict[str, Any] | None = item.get("Item")
        return found

    def run_meta(self, run_id: str) -> dict[str, Any]:
        item = self.table.get_item(Key=run_meta_key(run_id), ConsistentRead=True)
        return decode_meta_item(item.get("Item"))

    def execution_status(self, arn: str | None) -> str | None:
        """RUNNING, SUCCEEDED, ...; None when there is no such execution (yet)."""
        if not arn:
            return None
        try:
            return str(self.sfn.describe_execution(executionArn=arn)["status"])
        except self.sfn.exceptions.ExecutionDoesNotExist:
            return None

    def alive(self, record: Lifecycle) -> bool:
        """Whether the run the item names still runs (an execution not started yet counts as alive)."""
        return self.execution_status(record.execution_arn) not in ENDED

    # ---- writes ----------------------------------------------------------------------------------

    def start(self, config: RunInput) -> str:
        holder = self.lock()
        if holder and int(holder.get("expires_at", 0)) > time.time():
            raise EventRefused(
                f"cannot {config.action}: run {holder.get('run_id')} holds the lock of cluster {self.cluster} "
                f"(execution {holder.get('execution_arn')})"
            )
        name = f"{config.action}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        started = self.sfn.start_execution(
            stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(config.to_dict())
        )
        return str(started["executionArn"])

    def answer(self, record: Lifecycle, decision: str) -> None:
        try:
            self.sfn.send_task_success(taskToken=record.task_token, output=json.dumps({"decision": decision}))
        except (
            self.sfn.exceptions.TaskTimedOut,
            self.sfn.exceptions.InvalidToken,
            self.sfn.exceptions.TaskDoesNotExist,
        ) as exc:
            raise EventRefused(
                f"the run is no longer waiting in {record.state} (it moved on or timed out); "
                "`queue-balancer status` shows where it is"
            ) from exc

    def request(self, record: Lifecycle, control: Control) -> Lifecycle:
        """Record ``control`` for the run's next control check; returns the item as it is afterwards."""
        self._update(
            record,
            "SET requested = :requested, updated_at = :now",
            {":requested": control.value},
        )
        return self.lifecycle()

    def withdraw(self, record: Lifecycle) -> None:
        self._update(
            record,
            "SET updated_at = :now REMOVE requested",
            {":pause": Control.PAUSE.value},
            extra_condition=" AND requested = :pause",
        )

    def clear(self, record: Lifecycle, event: Event) -> None:
        """IDLE without an execution: ``reset`` zeroes the counts; a dead run's lock is released."""
        now = _now()
        item = record.to_item()
        status = self.execution_status(record.execution_arn)
        item.update({"state": State.IDLE.value, "updated_at": now})
        for key in ("task_token", "requested", "batch"):
            item.pop(key, None)
        if event is Event.RESET:
            item.update({"pending": 0, "done": 0, "failed": 0, "skipped": 0, "round": 0, "outcome": ""})
        if record.active:
            item["outcome"] = f"{event.value} after the execution ended ({status or 'gone'})"
        # Only over the item as it was read: a run starting meanwhile keeps its own.
        if record.run_id:
            condition, values = (
                "run_id = :run AND #state = :state",
                {":run": record.run_id, ":state": record.state.value},
            )
        else:
            condition, values = (
                "attribute_not_exists(run_id) AND (attribute_not_exists(#state) OR #state = :state)",
                {":state": record.state.value},
            )
        try:
            self.table.put_item(
                Item=item,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues=values,
            )
        except self.table.meta.client.exceptions.ConditionalCheckFailedException as exc:
            raise EventRefused(f"the balancer left {record.state} meanwhile; try again") from exc
        if record.run_id:
            # No lock, or another run's: not ours to release.
            with contextlib.suppress(self.table.meta.client.exceptions.ConditionalCheckFailedException):
                self.table.delete_item(
                    Key=lock_key(self.cluster),
                    ConditionExpression="run_id = :run",
                    ExpressionAttributeValues={":run": record.run_id},
                )

    def _update(
        self, record: Lifecycle, expression: str, values: dict[str, Any], extra_condition: str = ""
    ) -> None:
        try:
            self.table.update_item(
                Key=lifecycle_key(self.cluster),
                UpdateExpression=expression,
                ConditionExpression="run_id = :run AND #state = :state" + extra_condition,
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    **values,
                    ":run": record.run_id,
                    ":state": record.state.value,
                    ":now": _now(),
                },
            )
        except self.table.meta.client.exceptions.ConditionalCheckFailedException as exc:
            raise EventRefused(
                f"the balancer left {record.state} while the request was being written; try again"
            ) from exc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def aws_reason(exc: Exception) -> str:
    """botocore's error as ``Code: Message``."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return str(exc) or type(exc).__name__


Command = Callable[[argparse.Namespace], int]


def aws_errors(command: Command) -> Command:
    """botocore's errors (no credentials, access denied, endpoint down) as one actionable line."""

    @functools.wraps(command)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except BalancerError:
            raise
        except Exception as exc:
            module = type(exc).__module__
            if module.startswith(("botocore", "boto3", "urllib3")):
                raise WorkflowError(f"AWS call failed: {aws_reason(exc)}") from exc
            raise

    return wrapper
