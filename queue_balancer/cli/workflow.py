"""The workflow commands: ``queue-balancer run|load|go|pause|continue|stop|reset|info|status|last-report|
notifications|enable|disable``, against the Step Functions workflow on AWS (``--stack NAME``) or the local
endpoint (``--local``, the default). ``info``, ``status``, ``last-report`` and ``notifications`` only read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from queue_balancer.cli.aws import ENDED, Workflow, WorkflowError, aws_errors
from queue_balancer.cli.events import perform
from queue_balancer.cli.exit_codes import EXIT_MOVES_FAILED, EXIT_OK
from queue_balancer.cli.options import add_format_option, add_run_options, add_workflow_target
from queue_balancer.cli.output import print_json
from queue_balancer.cli.stack import connect
from queue_balancer.contract import PARTITION_KEY, SORT_KEY
from queue_balancer.errors import ConfigurationError
from queue_balancer.lifecycle import Event, Lifecycle, RunInput, State


@aws_errors
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
    return EXIT_MOVES_FAILED if record.outcome.startswith("failed") else EXIT_OK


@aws_errors
def cmd_info(args: argparse.Namespace) -> int:
    workflow = connect(args)
    record = workflow.lifecycle()
    lock = workflow.lock()
    data = {**record.to_item(), "lock": _lock_view(lock)}
    data.pop("task_token", None)
    data["waiting_for"] = _waiting_for(record)
    if record.run_id:
        data["config"] = workflow.run_meta(record.run_id).get("config")
    data.pop(PARTITION_KEY, None)
    data.pop(SORT_KEY, None)
    if args.format == "json":
        print_json(data)
    else:
        for key, value in data.items():
            if value not in (None, "", {}, []):
                print(
                    f"{key:<14}{json.dumps(value, default=str) if isinstance(value, dict | list) else value}"
                )
    return EXIT_OK


@aws_errors
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


@aws_errors
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


@aws_errors
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


@aws_errors
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


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the workflow commands to the main CLI (``build_parser([register])``)."""
    for name, help_text in _EVENTS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name in ("run", "load"):
            add_run_options(sub)
        add_workflow_target(sub)
        sub.set_defaults(func=cmd_event, event=name)

    sub = subparsers.add_parser("info", help="the lifecycle item: state, counts, run, lock, config")
    add_format_option(sub)
    add_workflow_target(sub)
    sub.set_defaults(func=cmd_info)

    sub = subparsers.add_parser("status", help="one line: state, counts, the execution and the lock")
    add_format_option(sub)
    add_workflow_target(sub)
    sub.set_defaults(func=cmd_status)

    sub = subparsers.add_parser(
        "last-report",
        aliases=["report-run"],
        help="before/after report of the last run (`report` shows the live distribution)",
    )
    sub.add_argument("--run", metavar="RUN_ID", help="a given run instead of the last one")
    add_workflow_target(sub)
    sub.set_defaults(func=cmd_last_report)

    sub = subparsers.add_parser(
        "notifications", help="print and consume the SNS notifications the local workflow sent (local only)"
    )
    add_workflow_target(sub)
    sub.set_defaults(func=cmd_notifications)

    for name, enable in (("enable", True), ("disable", False)):
        sub = subparsers.add_parser(
            name, help=f'{name} the EventBridge schedule that starts {{"action": "balance"}}'
        )
        add_workflow_target(sub)
        sub.set_defaults(func=cmd_schedule, enable=enable)
