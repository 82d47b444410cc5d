"""The workflow commands: ``queue-balancer run|load|go|pause|continue|stop|reset|info|status|last-report|
notifications|enable|disable``, against the Step Functions workflow on AWS (``--stack NAME``) or the local
endpoint (``--local``, the default). ``info``, ``status``, ``last-report`` and ``notifications`` only read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from queue_balancer.cli.aws import ENDED, Workflow, WorkflowError, aws_errors
from queue_balancer.cli.events import perform
from queue_balancer.cli.exit_codes import EXIT_INTERRUPTED, EXIT_MOVES_FAILED, EXIT_OK
from queue_balancer.cli.options import FORMATS, add_format_option, add_run_options, add_workflow_target
from queue_balancer.cli.output import emit
from queue_balancer.cli.stack import connect
from queue_balancer.contract import PARTITION_KEY, SORT_KEY
from queue_balancer.errors import ConfigurationError
from queue_balancer.lifecycle import Event, EventRefused, Lifecycle, Outcome, RunInput
from queue_balancer.report import STORED_LIST


@aws_errors
def cmd_event(args: argparse.Namespace) -> int:
    workflow = connect(args)
    event = Event(args.event)
    config = None
    if event in (Event.RUN, Event.LOAD):
        given = _given_run_options(args)
        if event is Event.LOAD:
            _refuse_new_options(workflow, given)
        config = RunInput.parse({"action": "load" if event is Event.LOAD else "balance", **given})
    performed = perform(workflow, event, config)
    print(performed, flush=True)
    # `load` always follows its run to READY, so a plan that cannot be made fails here, not later.
    if performed.execution_arn and (event is Event.LOAD or getattr(args, "wait", False)):
        try:
            return _wait(
                workflow, performed.execution_arn, args.wait_timeout, getattr(args, "format", "text")
            )
        except KeyboardInterrupt:
            run_id = performed.execution_arn.rsplit(":", 1)[-1]
            print(
                f"\nqueue-balancer: stopped following run {run_id}; the run goes on in the workflow: "
                "`queue-balancer status` follows it, `queue-balancer stop` ends it after its current batch",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    return EXIT_OK


_RUN_OPTIONS = {  # option dest -> the run input's key
    "concurrency": "concurrency",
    "batch_size": "batch_size",
    "rounds": "rounds",
    "pattern": "pattern",
    "max_moves": "max_moves",
    "max_publish_rate": "max_publish_rate",
    "max_deliver_rate": "max_deliver_rate",
    "poll_seconds": "poll_seconds",
    "vhost": "vhosts",
    "per_vhost": "per_vhost",
    "move_streams": "move_streams",
    "members": "members",
    "group_size": "group_size",
    "exclude_node": "exclude_nodes",
}


def _given_run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options given on the command line, as the run input's keys (absent ones left out)."""
    given: dict[str, Any] = {}
    for dest, key in _RUN_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is not None and value is not False:  # 0 is a value (refused by the run input's rules)
            given[key] = list(value) if isinstance(value, list) else value
    return given


def _refuse_new_options(workflow: Workflow, given: Mapping[str, Any]) -> None:
    """A run under way keeps the options it started with: ``load`` with other ones is refused, clearly."""
    record = workflow.lifecycle()
    if not given or not record.active or not record.run_id:
        return
    stored = RunInput.parse(workflow.run_meta(record.run_id).get("config") or {}).to_dict()
    wanted = RunInput.parse({**stored, **given}).to_dict()
    changed = sorted(k for k in given if wanted.get(k) != stored.get(k))
    if changed:
        keeps = ", ".join(f"{k}={stored.get(k)}" for k in changed)
        raise EventRefused(
            f"cannot load with new options: the balancer is {record.state} with run {record.run_id}, which "
            f"keeps its own ({keeps}); `queue-balancer reset` ends it, then `queue-balancer load` with the new "
            "options plans afresh (`load` without options re-plans the run with its own)"
        )


def _wait(workflow: Workflow, execution_arn: str, timeout: float, fmt: str = "text") -> int:
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
            waiting = record.waiting_for
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
    _wait_for_execution_end(workflow, record.execution_arn or execution_arn, deadline)
    meta = workflow.run_meta(run_id)
    failure = _failure(record, meta)
    if failure:
        raise WorkflowError(failure)
    _print_run_report(meta, fmt)
    print(f"run {run_id}: {record.outcome or 'finished'}", file=sys.stderr)
    return EXIT_MOVES_FAILED if record.counts.failed else EXIT_OK


def _wait_for_execution_end(workflow: Workflow, execution_arn: str, deadline: float) -> None:
    """The run is over once its execution has ended: its Cleanup gives the locks back after the lifecycle
    says IDLE, so a command issued right after this one returns must not find them still held."""
    while workflow.execution_status(execution_arn) not in ENDED | {None}:
        if time.monotonic() > deadline:
            raise WorkflowError(f"the run ended but {execution_arn} was still running; `status` follows it")
        time.sleep(0.25)


def _failure(record: Lifecycle, meta: Mapping[str, Any]) -> str | None:
    """Why the last run failed (the error and its reason), or None when it did not fail."""
    if not record.outcome.startswith(Outcome.FAILED.value):
        return None
    reason = meta.get("reason")
    return f"run {record.run_id} {record.outcome}" + (f": {reason}" if reason else "")


def _print_run_report(meta: Mapping[str, Any], fmt: str) -> None:
    """The run's before/after as its ReportRun wrote it: text, JSON or the notification's Markdown."""
    markdown = str(meta.get("summary") or "")
    emit(fmt, meta.get("report") or {}, lambda: str(meta.get("summary_text") or markdown), lambda: markdown)


@aws_errors
def cmd_info(args: argparse.Namespace) -> int:
    workflow = connect(args)
    record = workflow.lifecycle()
    meta = workflow.run_meta(record.run_id) if record.run_id else {}
    record = _settled(record, meta)
    data = {k: v for k, v in record.to_item().items() if k not in (PARTITION_KEY, SORT_KEY, "task_token")}
    data.update(_run_facts(record, meta))
    data["lock"] = _lock_view(workflow.lock())
    data["config"] = meta.get("config")

    def text() -> str:
        shown = {k: v for k, v in data.items() if v not in (None, "", {}, [])}
        width = max(map(len, shown), default=0) + 2
        return "\n".join(
            f"{k:<{width}}{json.dumps(v, default=str) if isinstance(v, dict | list) else v}"
            for k, v in shown.items()
        )

    emit(args.format, data, text)
    return EXIT_OK


@aws_errors
def cmd_status(args: argparse.Namespace) -> int:
    workflow = connect(args)
    record = workflow.lifecycle()
    status = workflow.execution_status(record.execution_arn) if record.execution_arn else None
    lock = _lock_view(workflow.lock())
    meta = workflow.run_meta(record.run_id) if record.run_id else {}
    record = _settled(record, meta)
    facts = _run_facts(record, meta)
    data = {
        "cluster": record.cluster,
        "state": record.state.value,
        "requested": record.requested.value if record.requested else None,
        **record.counts.to_dict(),
        "batch": record.batch.to_dict() if record.active and record.batch else None,
        **facts,
        "round": record.round,
        "run_id": record.run_id,
        "execution": record.execution_arn,
        "execution_status": status,
        "lock": lock,
        "outcome": record.outcome,
    }

    def text() -> str:
        lines = [f"cluster {record.cluster}: {record.describe()}"]
        if record.active and record.batch:
            lines.append(record.batch.describe())
        if facts.get("reason"):
            lines.append(f"reason: {facts['reason']}")
        if record.run_id:
            execution = (record.execution_arn or "").rsplit(":", 1)[-1]
            lines.append(
                f"run {record.run_id}: execution {execution} {status or 'not found'}, round {record.round}"
            )
        lines += _skipped_lines(facts, record.counts.skipped)
        lines += [
            f"stream {m['queue']!r} in vhost {m['vhost']!r}: {m['outcome']}"
            for m in facts.get("streams_best_effort") or []
        ]
        if lock:
            lines.append(f"lock held by run {lock['run_id']} until {lock['expires']}")
        if record.active and status in ENDED:
            lines.append(
                f"the execution has ended ({status}) without finishing the run: `queue-balancer reset` clears it"
            )
        return "\n".join(lines)

    emit(args.format, data, text)
    return EXIT_OK


def _settled(record: Lifecycle, meta: Mapping[str, Any]) -> Lifecycle:
    """The lifecycle with the skipped count of the run's report once it has one (the same as
    ``last-report``'s; while a run goes on, the count of its plan)."""
    report = meta.get("report") or {}
    if record.active or "skipped_count" not in report:
        return record
    return dataclasses.replace(
        record, counts=dataclasses.replace(record.counts, skipped=int(report["skipped_count"]))
    )


def _run_facts(record: Lifecycle, meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the run's meta item adds to the lifecycle: why it failed, which queues it skipped and why."""
    facts: dict[str, Any] = {"waiting_for": record.waiting_for}
    if meta.get("reason"):
        facts["reason"] = meta["reason"]
    report = meta.get("report") or {}
    if "skipped" in report:
        facts["skipped_queues"] = report["skipped"]
    elif "skipped" in meta:  # no report yet: the queues the current plan leaves where they are
        facts["skipped_queues"] = meta["skipped"]
    if report.get("best_effort"):
        facts["streams_best_effort"] = report["best_effort"]
    return facts


def _skipped_lines(facts: Mapping[str, Any], total: int, limit: int = 10) -> list[str]:
    """The skipped queues with their reasons; ``total`` is the count (the stored list is bounded)."""
    skipped = facts.get("skipped_queues") or []
    total = max(total, len(skipped))
    lines = [
        f"  {s['queue']!r} in vhost {s['vhost']!r} on {s['node']}: {s['reason']}" for s in skipped[:limit]
    ]
    if total > len(lines):
        lines.append(f"  ... and {total - len(lines)} more (`--format json` lists up to {STORED_LIST})")
    return [f"skipped ({total}): these queues stay where they are", *lines] if skipped else []


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
    record = workflow.lifecycle()
    run_id = args.run or record.run_id
    meta = workflow.run_meta(run_id) if run_id else {}
    if meta.get("reason") and not meta.get("summary"):  # a failed run: why, in every format
        failure = f"run {run_id} {meta.get('outcome') or 'failed'}: {meta['reason']}"
        data = {
            "run_id": run_id,
            "outcome": meta.get("outcome"),
            "error": meta.get("error"),
            "reason": meta["reason"],
        }
        emit(args.format, data, lambda: failure, lambda: failure)
        return EXIT_OK
    if not meta.get("summary"):
        raise WorkflowError(
            f"no report of {'run ' + run_id if run_id else 'any run'} on cluster {workflow.cluster} "
            "(a run writes it when it ends; `reset` deletes it)"
        )
    _print_run_report(meta, args.format)
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
    """Print what the local workflow published to its SNS topic; delete them only with ``--consume``.

    Every message is read first, printed, and only then deleted (``--consume``) or made visible again
    (the default), so a reader that stops early (``| head``) never makes a message disappear unread.
    """
    workflow = connect(args)
    queue_url = workflow.outputs.get("NotificationQueueUrl")
    if not queue_url:
        raise ConfigurationError("notifications are readable on the local endpoint only (on AWS: e-mail)")
    sqs = workflow.session.client("sqs", endpoint_url=workflow.endpoint_url)
    held: dict[str, Any] = {}  # message id -> message, each received once while it is invisible to others
    try:
        while messages := sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=60,
            AttributeNames=["SentTimestamp"],
        ).get("Messages", []):
            held.update((m["MessageId"], m) for m in messages)
        ordered = sorted(held.values(), key=lambda m: int(m.get("Attributes", {}).get("SentTimestamp", 0)))
        notes = [_notification(m) for m in ordered]
        emit(args.format, notes, lambda: _notifications_text(notes))
        sys.stdout.flush()
        if args.consume:
            for message in ordered:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                del held[message["MessageId"]]
    finally:
        for message in held.values():  # not consumed: visible again for the next reader
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
    return EXIT_OK


def _notification(message: Mapping[str, Any]) -> dict[str, str]:
    envelope = json.loads(message["Body"])
    return {
        "subject": str(envelope.get("Subject") or ""),
        "timestamp": str(envelope.get("Timestamp") or ""),
        "message": str(envelope.get("Message") or ""),
    }


def _notifications_text(notes: list[dict[str, str]]) -> str:
    lines: list[str] = []
    for note in notes:
        lines += [f"--- SNS {note['subject'] or '(no subject)'} ({note['timestamp']})", note["message"]]
    lines.append(f"{len(notes)} notification(s)")
    return "\n".join(lines)


# ---- parser --------------------------------------------------------------------------------------------

_EVENTS = {
    "run": "start a balancing run now (IDLE only): plan, then move, verify, report",
    "load": "plan a run and wait in READY for `go`; returns once the plan is ready or has failed "
    "(in READY or PAUSE: re-plans the run under way with its own options)",
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
            add_format_option(sub, FORMATS)
        add_workflow_target(sub)
        sub.set_defaults(func=cmd_event, event=name)

    sub = subparsers.add_parser("info", help="the lifecycle item: state, counts, run, lock, config")
    add_format_option(sub)
    add_workflow_target(sub)
    sub.set_defaults(func=cmd_info)

    sub = subparsers.add_parser(
        "status", help="state, counts, the batch under way, the execution, the lock and the skipped queues"
    )
    add_format_option(sub)
    add_workflow_target(sub)
    sub.set_defaults(func=cmd_status)

    sub = subparsers.add_parser(
        "last-report",
        aliases=["report-run"],
        help="before/after report of the last run (`report` shows the live distribution)",
    )
    sub.add_argument("--run", metavar="RUN_ID", help="a given run instead of the last one")
    add_format_option(sub, FORMATS)
    add_workflow_target(sub)
    sub.set_defaults(func=cmd_last_report)

    sub = subparsers.add_parser(
        "notifications",
        help="print the SNS notifications the local workflow sent (local only); they stay unless --consume",
    )
    sub.add_argument("--consume", action="store_true", help="delete them once printed")
    add_format_option(sub)
    add_workflow_target(sub)
    sub.set_defaults(func=cmd_notifications)

    for name, enable in (("enable", True), ("disable", False)):
        sub = subparsers.add_parser(
            name, help=f'{name} the EventBridge schedule that starts {{"action": "balance"}}'
        )
        add_workflow_target(sub)
        sub.set_defaults(func=cmd_schedule, enable=enable)
