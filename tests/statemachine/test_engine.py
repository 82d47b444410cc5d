"""Pins the local engine's behaviour that the workflow relies on, so a moto upgrade cannot change it
silently: the dispatcher (a handler's exception is a function error with its errorType), Retry on that
name, ``$$.State.RetryCount``, Wait with ``SecondsPath``, ``.waitForTaskToken`` answered by
SendTaskSuccess, the history's shape (which the continue-as-new budget counts on), the SSM emulation
behind the leader transfer, and ``states:startExecution`` continuing a run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from lambdas.errors import ManagementUnavailable
from lambdas.ssm_eval import SsmEval
from queue_balancer import eval_document
from queue_balancer.errors import LeaderTransferError
from queue_balancer.leader_transfer import RESULT_MARKER
from queue_balancer.lifecycle import HISTORY_RESERVE, State
from queue_balancer.local.endpoint import CLUSTER_NAME, SSM_TAG_KEY
from queue_balancer.member_changes import EvalMemberChanger
from queue_balancer.model import QueueRef
from tests.statemachine.conftest import Harness, spread

pytestmark = pytest.mark.integration


def _handler(harness: Harness, suffix: str) -> str:
    return next(k for k in harness.endpoint.dispatcher.handlers if k.endswith(suffix))


def _wait_durations(events: list[dict[str, Any]]) -> list[float]:
    """Seconds between each WaitStateEntered and the WaitStateExited after it (one move: no overlap)."""
    durations, entered = [], None
    for event in events:
        if event["type"] == "WaitStateEntered":
            entered = event["timestamp"]
        elif event["type"] == "WaitStateExited" and entered is not None:
            durations.append((event["timestamp"] - entered).total_seconds())
            entered = None
    return durations


def test_local_engine_smoke_dispatcher_retry_wait_token_and_history(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import queue_balancer.batch_run

    monkeypatch.setattr(
        queue_balancer.batch_run, "BUDGET_SECONDS", 0.0
    )  # one poll per slice: Wait between them
    harness.seed(2, "classic", "c")  # a classic move takes several polls: the slices need the Wait
    preflight = _handler(harness, "preflight")
    original = harness.endpoint.dispatcher.handlers[preflight]
    seen: list[int] = []

    def flaky(event: dict[str, Any], context: Any) -> Any:
        seen.append(int(event["retry"]))
        if len(seen) == 1:
            raise ManagementUnavailable("injected: the management API answered 503")
        return original(event, context)

    harness.endpoint.dispatcher.handlers[preflight] = flaky
    arn = harness.start({"action": "load", "poll_seconds": 1})
    ready = harness.wait_state(State.READY, token=True)
    harness.aws("stepfunctions").send_task_success(
        taskToken=ready.task_token, output=json.dumps({"decision": "go"})
    )
    done = harness.finished(arn)
    assert done["status"] == "SUCCEEDED", done.get("cause")
    assert spread(harness.leaders()) == 1  # 2 queues on 3 nodes

    history = harness.history(arn)
    types = [e["type"] for e in history]
    # Dispatcher + Retry: the exception became a function error named after its class, and was retried.
    failure = next(e for e in history if e["type"] == "LambdaFunctionFailed")
    assert failure["lambdaFunctionFailedEventDetails"]["error"] == "ManagementUnavailable"
    assert "injected" in json.loads(failure["lambdaFunctionFailedEventDetails"]["cause"])["errorMessage"]
    assert seen == [0, 1]  # $$.State.RetryCount as the handler saw it
    # Task token: the parked task was submitted, then succeeded with SendTaskSuccess's output.
    assert "TaskSubmitted" in types
    answered = next(
        e
        for e in history
        if e["type"] == "TaskSucceeded" and "decision" in e["taskSucceededEventDetails"]["output"]
    )
    assert json.loads(answered["taskSucceededEventDetails"]["output"]) == {"decision": "go"}
    # Wait: each WaitForBatch waited the seconds RunBatch asked for (poll_seconds = 1).
    waits = _wait_durations(history)
    assert waits and all(w >= 0.9 for w in waits)
    # The history has the shape the budget counts: 5 events per Lambda task, 2 per Wait/Choice.
    run = json.loads(done["output"])["run"]
    before_report = next(
        i
        for i, e in enumerate(history)
        if (e.get("stateEnteredEventDetails") or {}).get("name") == "ReportRun"
    )
    assert before_report <= run["events"] <= before_report + 60  # counted, never undercounted
    assert len(history) - before_report < HISTORY_RESERVE  # the end of a run fits in the reserve
    assert types.count("LambdaFunctionScheduled") == types.count("LambdaFunctionStarted")
    calls = [name.rsplit("-", 2)[-2:] for name, result in harness.endpoint.dispatcher.calls if result == "ok"]
    assert calls.count(["run", "batch"]) >= 2


def test_ssm_runs_only_the_balancers_document_and_its_validated_operations_on_the_local_nodes(
    harness: Harness,
) -> None:
    ssm, ec2 = harness.aws("ssm"), harness.aws("ec2")
    document = eval_document.document_name(CLUSTER_NAME)

    def running() -> list[str]:
        return [str(n["name"]) for n in harness.client.nodes() if n.get("running")]

    run_eval = SsmEval(ssm, ec2, SSM_TAG_KEY, CLUSTER_NAME, document, running, timeout=30)
    # The document's own Erlang, run by rabbitmqctl on a real node: a queue that is not there answers per queue.
    answers = EvalMemberChanger(run_eval).status([QueueRef("/", "no 'such' queue")])
    assert "not_found" in str(answers[QueueRef("/", "no 'such' queue")])

    with pytest.raises(LeaderTransferError, match="refusing another expression"):
        run_eval(f'io:format("~s~s~n", ["{RESULT_MARKER}", "[]"]).')
    instance = run_eval.instance()
    for forbidden in (
        {"operation": ["os_cmd"], "items": [""]},
        {"operation": ["member_status"], "items": ["a'"]},
    ):
        with pytest.raises(ClientError, match="does not allow"):
            ssm.send_command(InstanceIds=[instance], DocumentName=document, Parameters=forbidden)
    sent = ssm.send_command(
        InstanceIds=[instance], DocumentName="AWS-RunShellScript", Parameters={"commands": ["rm -rf /"]}
    )["Command"]["CommandId"]
    refused = ssm.get_command_invocation(CommandId=sent, InstanceId=instance)
    assert refused["Status"] == "Failed" and "only `rabbitmqctl eval" in refused["StandardErrorContent"]

    with pytest.raises(LeaderTransferError, match="no running instance tagged"):
        SsmEval(ssm, ec2, SSM_TAG_KEY, "another-cluster", document, running).instance()
