"""The workflow commands: ``queue-balancer run|load|go|pause|continue|stop|reset|info|status|last-report|
enable|disable``, against the Step Functions workflow on AWS (``--stack NAME``) or the local endpoint
(``--local``, the default).

Each event goes through the lifecycle rules (``queue_balancer.lifecycle.decide``) first, so a command
in the wrong state is refused with a line naming the state, and an accepted one becomes exactly one
AWS call: StartExecution (run, load), SendTaskSuccess to the parked run (go, continue, and load/stop/
reset while parked), or a request written into the lifecycle item that the run honours at its next
control check (pause, and load/stop/reset while it balances). ``info``, ``status`` and ``last-report``
only read.

On AWS the stack's outputs name everything (``StateMachineArn``, ``LifecycleTableName``,
``NotificationTopicArn``, ``ScheduleRuleName``, ``ClusterName``); credentials and region come from the
usual AWS configuration (``--region`` overrides). Locally, the endpoint of ``queue-balancer local up``
writes the same outputs into the local cluster's directory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from queue_balancer.errors import BalancerError, ConfigurationError
from queue_balancer.lifecycle import (
    LIFECYCLE_SK,
    LOCK_SK,
    RUN_META_SK,
    Action,
    Control,
    Decision,
    Event,
    EventRefused,
    Lifecycle,
    Reaction,
    RunInput,
    State,
    cluster_pk,
    decide,
    run_pk,
)

EXIT_OK, EXIT_ERROR, EXIT_RUN_FAILED = 0, 1, 2
REQUIRED_OUTPUTS = (
    "StateMachineArn",
    "LifecycleTableName",
    "NotificationTopicArn",
    "ScheduleRuleName",
    "ClusterName",
)
ENDED = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})


class WorkflowError(BalancerError):
    """The workflow could not be reached or did not do what was asked; the message says which and why."""


# ---- where the workflow is ----------------------------------------------------------------------------


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
        item = self.table.get_item(
            Key={"pk": cluster_pk(self.cluster), "sk": LIFECYCLE_SK}, ConsistentRead=True
        )
        return Lifecycle.from_item(item.get("Item"), self.cluster)

    def lock(self) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": cluster_pk(self.cluster), "sk": LOCK_SK}, ConsistentRead=True)
        found: dict[str, Any] | None = item.get("Item")
        return found

    def run_meta(self, run_id: str) -> dict[str, Any]:
        item = self.table.get_item(Key={"pk": run_pk(run_id), "sk": RUN_META_SK}, ConsistentRead=True)
        raw: dict[str, Any] = item.get("Item") or {}
        return {
            k: json.loads(v[5:]) if isinstance(v, str) and v.startswith("json:") else v
            for k, v in raw.items()
        }

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
        for key in ("task_token", "requested"):
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
                    Key={"pk": cluster_pk(self.cluster), "sk": LOCK_SK},
                    ConditionExpression="run_id = :run",
                    ExpressionAttributeValues={":run": record.run_id},
                )

    def _update(
        self, record: Lifecycle, expression: str, values: dict[str, Any], extra_condition: str = ""
    ) -> None:
        try:
            self.table.update_item(
                Key={"pk": cluster_pk(self.cluster), "sk": LIFECYCLE_SK},
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


def connect(args: argparse.Namespace) -> Workflow:
    """The workflow ``--stack NAME`` deploys on AWS, or the local endpoint's (the default)."""
    try:
        import boto3
    except ModuleNotFoundError as exc:  # pragma: no cover - the aws extra is missing
        raise ConfigurationError("the workflow commands need boto3: pip install '.[aws]'") from exc
    if args.stack:
        session = boto3.Session(region_name=args.region)
        try:
            stacks = session.client("cloudformation").describe_stacks(StackName=args.stack)["Stacks"]
        except Exception as exc:
            raise WorkflowError(f"cannot read stack {args.stack}: {_aws_reason(exc)}") from exc
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
        if missing:
            raise ConfigurationError(
                f"stack {args.stack} has no output(s) {', '.join(missing)}: is it a BalancerStack?"
            )
        return Workflow(outputs, session, None, f"stack {args.stack}")
    from queue_balancer.local.cluster import default_base_dir
    from queue_balancer.local.endpoint import local_outputs

    local = local_outputs(default_base_dir())
    session = boto3.Session(
        region_name=local.Region, aws_access_key_id="local", aws_secret_access_key="local"
    )
    return Workflow(local.to_dict(), session, local.EndpointUrl, "the local endpoint")


def _aws_reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return str(exc) or type(exc).__name__


# ---- commands ----------------------------------------------------------------------------------------


Command = Callable[[argparse.Namespace], int]


def _aws_errors(command: Command) -> Command:
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
                raise WorkflowError(f"AWS call failed: {_aws_reason(exc)}") from exc
            raise

    return wrapper


@dataclass(frozen=True)
class Performed:
    """What an accepted event did: one line for the operator, and the execution it started, if any."""

    message: str
    execution_arn: str | None = None

    def __str__(self) -> str:
        return self.message


def perform(workflow: Workflow, event: Event, config: RunInput | None = None) -> Performed:
    """Apply an operator's event: the lifecycle rules decide, one AWS call does it."""
    record = workflow.lifecycle()
    alive = workflow.alive(record) if record.active else True
    reaction = decide(record, event, execution_alive=alive)
    return _apply(workflow, record, event, reaction, config)


def _apply(
    workflow: Workflow, record: Lifecycle, event: Event, reaction: Reaction, config: RunInput | None
) -> Performed:
    action = reaction.action
    if action is Action.START:
        run_input = config or RunInput()
        run_input = RunInput.parse({**run_input.to_dict(), "action": reaction.argument})
        arn = workflow.start(run_input)
        return Performed(
            f"{reaction.message}: started execution {arn.rsplit(':', 1)[-1]} on {workflow.label}", arn
        )
    if action is Action.ANSWER:
        workflow.answer(record, reaction.argument)
        return Performed(reaction.message)
    if action is Action.REQUEST:
        after = workflow.request(record, Control(reaction.argument))
        # The run may have parked between our read and our write: then answer it directly.
        if (
            after.state in (State.READY, State.PAUSE)
            and after.task_token
            and reaction.argument != Control.PAUSE
        ):
            decision = Decision(reaction.argument)
            workflow.answer(after, decision.value)
            return Performed(f"the {after.state} run got '{decision.value}'")
        return Performed(f"{reaction.argument} requested: {reaction.message}")
    if action is Action.WITHDRAW:
        workflow.withdraw(record)
        return Performed(reaction.message)
    if action is Action.CLEAR:
        workflow.clear(record, event)
        hint = ""
        if record.active:
            hint = " (temporary queue-balancer-* policies may remain: `queue-balancer cleanup` removes them)"
        return Performed(reaction.message + hint)
    return Performed(reaction.message)


@_aws_errors
def cmd_event(args: argparse.Namespace) -> int:
    workflow = connect(args)
    event = Event(args.event)
    config = _run_input(args, event) if event in (Event.RUN, Event.LOAD) else None
    performed = perform(workflow, event, config)
    print(performed)
    if getattr(args, "wait", False) and performed.execution_arn:
        return _wait(workflow, performed.execution_arn, args.wait_timeout)
    return EXIT_OK


def _run_input(args: argparse.Namespace, event: Event) -> RunInput:
    data: dict[str, Any] = {"action": "load" if event is Event.LOAD else "balance"}
    for key in (
        "concurrency",
        "batch_size",
        "rounds",
        "pattern",
        "max_moves",
        "max_publish_rate",
        "max_deliver_rate",
        "poll_seconds",
    ):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    if args.vhost:
        data["vhosts"] = list(args.vhost)
    if args.per_vhost:
        data["per_vhost"] = True
    return RunInput.parse(data)


def _wait(workflow: Workflow, execution_arn: str, timeout: float) -> int:
    """Follow the run this execution started (across continuations) until it is IDLE again or parked."""
    run_id = execution_arn.rsplit(":", 1)[-1]
    deadline = time.monotonic() + timeout
    shown = ""
    while True:
        record = workflow.lifecycle()
        if record.run_id == run_id:
            if record.describe() != shown:  # the lifecycle as it goes, e.g. READY -> BALANCING -> IDLE
                shown = record.describe()
                print(f"lifecycle: {shown}", file=sys.stderr, flush=True)
            if not record.active:
                break
            waiting = _waiting_for(record)
            if waiting:
                print(f"the run waits in {record.state}: `queue-balancer {waiting}` goes on")
                return EXIT_OK
        else:
            described = workflow.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] in ENDED:  # ended before it owned the lifecycle: refused input, lock held
                raise WorkflowError(
                    f"the run did not start: {described.get('error')}: {described.get('cause')}"
                )
        if time.monotonic() > deadline:
            raise WorkflowError(f"the run was still {record.state} after {timeout:g} s; `status` follows it")
        time.sleep(0.5)
    summary = workflow.run_meta(run_id).get("summary")
    if summary:
        print(summary)
    print(f"run {run_id}: {record.outcome or 'finished'}")
    return EXIT_RUN_FAILED if record.outcome.startswith("failed") else EXIT_OK


@_aws_errors
def cmd_info(args: argparse.Namespace) -> int:
    workflow = connect(args)
    record = workflow.lifecycle()
    lock = workflow.lock()
    data = {**record.to_item(), "lock": _lock_view(lock)}
    data.pop("task_token", None)
    data["waiting_for"] = _waiting_for(record)
    if record.run_id:
        data["config"] = workflow.run_meta(record.run_id).get("config")
    data.pop("pk", None)
    data.pop("sk", None)
    if args.format == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        for key, value in data.items():
            if value not in (None, "", {}, []):
                print(
                    f"{key:<14}{json.dumps(value, default=str) if isinstance(value, dict | list) else value}"
                )
    return EXIT_OK


@_aws_errors
def cmd_status(args: argparse.Namespace) -> int:
    workflow = connect(args)
    record = workflow.lifecycle()
    status = workflow.execution_status(record.execution_arn) if record.execution_arn else None
    lock = _lock_view(workflow.lock())
    if args.format == "json":
        print(
            json.dumps(
                {
                    "cluster": record.cluster,
                    "state": record.state.value,
                    "requested": record.requested.value if record.requested else None,
                    **record.counts.to_dict(),
                    "round": record.round,
                    "run_id": record.run_id,
                    "execution": record.execution_arn,
                    "execution_status": status,
                    "waiting_for": _waiting_for(record),
                    "lock": lock,
                    "outcome": record.outcome,
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"cluster {record.cluster}: {record.describe()}")
    if record.run_id:
        execution = (record.execution_arn or "").rsplit(":", 1)[-1]
        print(f"run {record.run_id}: execution {execution} {status or 'not found'}, round {record.round}")
    if lock:
        print(f"lock held by run {lock['run_id']} until {lock['expires']}")
    if record.active and status in ENDED:
        print(
            f"the execution has ended ({status}) without finishing the run: `queue-balancer reset` clears it"
        )
    return EXIT_OK


def _waiting_for(record: Lifecycle) -> str | None:
    if record.task_token and record.state is State.READY:
        return "go"
    if record.task_token and record.state is State.PAUSE:
        return "continue"
    return None


def _lock_view(lock: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not lock:
        return None
    expires = int(lock.get("expires_at", 0))
    return {
        "run_id": str(lock.get("run_id")),
        "execution": str(lock.get("execution_arn")),
        "expires": datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds"),
        "expired": expires < time.time(),
    }


@_aws_errors
def cmd_last_report(args: argparse.Namespace) -> int:
    workflow = connect(args)
    run_id = args.run or workflow.lifecycle().run_id
    meta = workflow.run_meta(run_id) if run_id else {}
    if not meta.get("summary"):
        raise WorkflowError(
            f"no report of {'run ' + run_id if run_id else 'any run'} on cluster {workflow.cluster} "
            "(a run writes it when it ends; `reset` deletes it)"
        )
    print(meta["summary"])
    return EXIT_OK


@_aws_errors
def cmd_schedule(args: argparse.Namespace) -> int:
    workflow = connect(args)
    rule = workflow.outputs["ScheduleRuleName"]
    if args.enable:
        workflow.events.enable_rule(Name=rule)
    else:
        workflow.events.disable_rule(Name=rule)
    described = workflow.events.describe_rule(Name=rule)
    print(f"schedule {rule} ({described.get('ScheduleExpression', 'no schedule')}): {described['State']}")
    return EXIT_OK


@_aws_errors
def cmd_notifications(args: argparse.Namespace) -> int:
    """Print (and consume) what the local workflow published to its SNS topic."""
    workflow = connect(args)
    queue_url = workflow.outputs.get("NotificationQueueUrl")
    if not queue_url:
        raise ConfigurationError("notifications are readable on the local endpoint only (on AWS: e-mail)")
    sqs = workflow.session.client("sqs", endpoint_url=workflow.endpoint_url)
    count = 0
    while True:
        received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = received.get("Messages", [])
        if not messages:
            break
        for message in messages:
            envelope = json.loads(message["Body"])
            print(f"--- SNS {envelope.get('Subject') or '(no subject)'} ({envelope.get('Timestamp', '')})")
            print(envelope.get("Message", ""))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            count += 1
    print(f"{count} notification(s)")
    return EXIT_OK


# ---- parser --------------------------------------------------------------------------------------------

_EVENTS = {
    "run": "start a balancing run now (IDLE only): plan, then move, verify, report",
    "load": "plan a run and wait in READY for `go` (any state: re-plans a run under way)",
    "go": "balance the loaded plan (READY only)",
    "pause": "pause the run after its current batch (BALANCING only)",
    "continue": "resume a paused run (PAUSE only; withdraws a pending pause)",
    "stop": "end the run after its current batch; `info` keeps its counts (any state)",
    "reset": "end the run and clear its state to IDLE (any state; clears a run whose execution died)",
}


def _target(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the workflow runs")
    choice = where.add_mutually_exclusive_group()
    choice.add_argument(
        "--stack", metavar="NAME", help="the BalancerStack deployed on AWS (reads its outputs)"
    )
    choice.add_argument(
        "--local",
        dest="workflow_local",
        action="store_true",
        help="the local endpoint of `queue-balancer local up` (the default)",
    )
    where.add_argument("--region", help="AWS region of the stack (default: your AWS configuration)")


def _run_options(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("the run (the execution's input; see the README, 'The workflow')")
    run.add_argument(
        "--concurrency", type=int, metavar="K", help="moves at once, the Map's MaxConcurrency (default 1)"
    )
    run.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="moves between two control checks, where pause/stop take effect (default max(10, K))",
    )
    run.add_argument(
        "--rounds", type=int, metavar="R", help="verify-and-replan rounds while that improves (default 3)"
    )
    run.add_argument("--max-moves", type=int, metavar="M", help="plan at most M moves")
    run.add_argument("--vhost", action="append", metavar="V", help="only queues of this vhost (repeatable)")
    run.add_argument("--pattern", metavar="REGEX", help="only queues whose name matches this regex")
    run.add_argument("--per-vhost", action="store_true", help="balance every vhost on its own")
    run.add_argument(
        "--max-publish-rate",
        type=float,
        metavar="N",
        help="refuse to start while the cluster publishes more than N msg/s",
    )
    run.add_argument(
        "--max-deliver-rate",
        type=float,
        metavar="N",
        help="refuse to start while the cluster delivers more than N msg/s",
    )
    run.add_argument(
        "--poll-seconds", type=int, metavar="S", help="first wait between two checks of a move (default 5)"
    )
    run.add_argument("--wait", action="store_true", help="follow the run until it ends and print its report")
    run.add_argument(
        "--wait-timeout", type=float, default=3600.0, metavar="S", help="give up waiting after S s"
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the workflow commands to the main CLI (``build_parser([register])``)."""
    for name, help_text in _EVENTS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name in ("run", "load"):
            _run_options(sub)
        _target(sub)
        sub.set_defaults(func=cmd_event, event=name)

    sub = subparsers.add_parser("info", help="the lifecycle item: state, counts, run, lock, config")
    sub.add_argument("--format", choices=("text", "json"), default="text")
    _target(sub)
    sub.set_defaults(func=cmd_info)

    sub = subparsers.add_parser("status", help="one line: state, counts, the execution and the lock")
    sub.add_argument("--format", choices=("text", "json"), default="text")
    _target(sub)
    sub.set_defaults(func=cmd_status)

    sub = subparsers.add_parser(
        "last-report",
        aliases=["report-run"],
        help="before/after report of the last run (`report` shows the live distribution)",
    )
    sub.add_argument("--run", metavar="RUN_ID", help="a given run instead of the last one")
    _target(sub)
    sub.set_defaults(func=cmd_last_report)

    sub = subparsers.add_parser(
        "notifications", help="print and consume the SNS notifications the local workflow sent (local only)"
    )
    _target(sub)
    sub.set_defaults(func=cmd_notifications)

    for name, enable in (("enable", True), ("disable", False)):
        sub = subparsers.add_parser(
            name, help=f'{name} the EventBridge schedule that starts {{"action": "balance"}}'
        )
        _target(sub)
        sub.set_defaults(func=cmd_schedule, enable=enable)


def main(argv: list[str] | None = None) -> int:
    """Only the workflow commands (the full CLI is ``queue_balancer.cli``)."""
    parser = argparse.ArgumentParser(prog="queue-balancer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BalancerError as exc:
        print(f"queue-balancer: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return code
