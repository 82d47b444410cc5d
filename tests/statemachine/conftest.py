"""The real ASL executed on the local AWS endpoint (moto, in this process), handlers bound in-process,
against real RabbitMQ nodes.

The nodes are the session cluster of tests/conftest.py, shared with tests/integration. Every wait here is
on an observed condition with a deadline (``wait_until``), never a bare sleep.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import boto3
import pytest

from queue_balancer.cli.aws import Workflow
from queue_balancer.contract import STATUS_CHANGE
from queue_balancer.errors import NotFound
from queue_balancer.lifecycle import Lifecycle, State, cluster_pk
from queue_balancer.local import endpoint as local_endpoint
from queue_balancer.local.aws_emulation import InvocationContext
from queue_balancer.local.cluster import LocalCluster
from queue_balancer.local.endpoint import LocalEndpoint, Outputs
from queue_balancer.local.seed import QueueType, seed
from queue_balancer.lock import LOCK_PARAMETER, LockHolder
from queue_balancer.management import ManagementClient
from queue_balancer.model import Queue
from queue_balancer.movers import POLICY_PREFIX
from tests.conftest import wait_until

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Handlers that publish no metric make powertools warn on every call; that is expected here."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore:No application metrics to publish"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def endpoint(local_cluster: LocalCluster) -> Iterator[LocalEndpoint]:
    """The local AWS endpoint in this process (handlers run here, so tests can wrap them)."""
    with LocalEndpoint(free_port(), local_cluster.config) as running:
        yield running


@dataclass
class Harness:
    """The endpoint, the cluster and the AWS clients a test drives them with."""

    endpoint: LocalEndpoint
    cluster: LocalCluster
    outputs: Outputs
    session: Any
    client: ManagementClient
    executions: list[str] = field(default_factory=list)

    def aws(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.outputs.EndpointUrl)

    @property
    def workflow(self) -> Workflow:
        """What the CLI's workflow commands talk to (``queue_balancer.cli.aws``)."""
        return Workflow(self.outputs.to_dict(), self.session, self.outputs.EndpointUrl, "the test endpoint")

    @property
    def table(self) -> Any:
        return self.session.resource("dynamodb", endpoint_url=self.outputs.EndpointUrl).Table(
            self.outputs.LifecycleTableName
        )

    # ---- executions ----------------------------------------------------------------------------

    def start(self, data: Any = None, name: str | None = None, *, text: str | None = None) -> str:
        """Start an execution with ``data`` as its input, or with the JSON ``text`` as it is written."""
        name = name or f"t{len(self.executions)}-{int(time.time() * 1000) % 10**8}"
        arn = self.aws("stepfunctions").start_execution(
            stateMachineArn=self.outputs.StateMachineArn,
            name=name,
            input=json.dumps(data) if text is None else text,
        )["executionArn"]
        self.executions.append(arn)
        return str(arn)

    def describe(self, arn: str) -> dict[str, Any]:
        result: dict[str, Any] = self.aws("stepfunctions").describe_execution(executionArn=arn)
        return result

    def finished(self, arn: str, timeout: float = 90) -> dict[str, Any]:
        sfn = self.aws("stepfunctions")
        return wait_until(
            lambda: (d := sfn.describe_execution(executionArn=arn))["status"] != "RUNNING" and d,
            timeout=timeout,
            what=f"execution {arn.rsplit(':', 1)[-1]} to end",
        )

    def end_stopped(self, arn: str, error: str, cause: str = "") -> dict[str, Any]:
        """What EventBridge has the Cleanup function do on AWS once ``arn`` was stopped: undo its run."""
        name = next(k for k in self.endpoint.dispatcher.handlers if k.endswith("cleanup"))
        event = {
            "version": "0",
            "detail-type": STATUS_CHANGE,
            "source": "aws.states",
            "detail": {"executionArn": arn, "status": "ABORTED", "error": error, "cause": cause},
        }
        ended: dict[str, Any] = self.endpoint.dispatcher.handlers[name](
            event, InvocationContext(function_name=name)
        )
        return ended

    def stop_running(self) -> None:
        """Stop every execution still running (a test's own, one the CLI started, a continuation), undo its
        run as Cleanup would and wait for the Lambdas still under way: nothing of a test (a lock, a policy,
        a slice moving queues, a planning) may run into the next one, whatever fixture that one uses.

        Cleanup asks a RunBatch slice to stop and waits for it; it runs again once every Lambda has ended,
        for a Task that took the locks after the first pass (Preflight); and the whole goes round again
        for a continuation started meanwhile."""
        sfn = self.aws("stepfunctions")
        stopped: list[str] = []
        failures: list[str] = []
        while True:
            listed = sfn.list_executions(stateMachineArn=self.outputs.StateMachineArn, statusFilter="RUNNING")
            running = [str(e["executionArn"]) for e in listed["executions"]]
            for arn in running:
                sfn.stop_execution(executionArn=arn, error="TestTeardown")
            stopped += running
            for arn in running:
                failures += self._end_quietly(arn)
            assert self.endpoint.dispatcher.await_idle(timeout=180), "a Lambda of the test still runs"
            for arn in stopped:  # undoes only what an execution still owns: a second pass is harmless
                failures += self._end_quietly(arn)
            if not running:
                break
        assert not failures, failures

    def _end_quietly(self, arn: str) -> list[str]:
        try:
            self.end_stopped(arn, "TestTeardown")
        except Exception as exc:  # every other execution is still stopped and undone
            return [f"{arn}: {type(exc).__name__}: {exc}"]
        return []

    def history(self, arn: str) -> list[dict[str, Any]]:
        sfn = self.aws("stepfunctions")
        events: list[dict[str, Any]] = []
        query: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
        while True:
            page = sfn.get_execution_history(**query)
            events += page["events"]
            if not page.get("nextToken"):
                return events
            query["nextToken"] = page["nextToken"]

    # ---- lifecycle -----------------------------------------------------------------------------

    def lifecycle(self) -> Lifecycle:
        return self.workflow.lifecycle()

    def cluster_lock(self) -> LockHolder | None:
        """The in-cluster lock (the CLI's, which the workflow takes too)."""
        try:
            return LockHolder.from_value(self.client.global_parameter(LOCK_PARAMETER)["value"])
        except NotFound:
            return None

    def lock(self) -> dict[str, Any] | None:
        return self.workflow.lock()

    def wait_state(self, state: State, *, token: bool | None = None, timeout: float = 60) -> Lifecycle:
        def reached() -> Lifecycle | None:
            current = self.lifecycle()
            if current.state is state and (token is None or bool(current.task_token) == token):
                return current
            return None

        return wait_until(reached, timeout=timeout, what=f"the lifecycle to reach {state}")

    # ---- notifications -------------------------------------------------------------------------

    def notifications(self, count: int = 1, timeout: float = 30) -> list[dict[str, str]]:
        """The SNS messages of the topic, read through its SQS subscription."""
        sqs = self.aws("sqs")
        found: list[dict[str, str]] = []

        def enough() -> bool:
            for message in sqs.receive_message(
                QueueUrl=self.outputs.NotificationQueueUrl, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", []):
                body = json.loads(message["Body"])
                found.append({"subject": body.get("Subject", ""), "message": body["Message"]})
                sqs.delete_message(
                    QueueUrl=self.outputs.NotificationQueueUrl, ReceiptHandle=message["ReceiptHandle"]
                )
            return len(found) >= count

        wait_until(enough, timeout=timeout, what=f"{count} notification(s)")
        return found

    # ---- cluster -------------------------------------------------------------------------------

    def seed(self, queues: int, queue_type: QueueType, prefix: str, messages: int = 10) -> None:
        """Queues all led by node 1 (the Mover counts their messages over AMQP, not from the statistics)."""
        seed(self.cluster, queues=queues, messages=messages, queue_type=queue_type, prefix=prefix)

        def listed() -> bool:
            return sum(1 for q in self.client.queues() if q["name"].startswith(prefix + ".")) == queues

        wait_until(listed, timeout=30, what=f"the {queues} queues {prefix}.* in the management API")

    def leaders(self) -> dict[str, int]:
        counts = {n.name: 0 for n in self.cluster.nodes}
        for q in self.client.queues():
            counts[Queue.from_api(q).leader] += 1
        return counts

    def temporary_policies(self) -> list[str]:
        return [str(p["name"]) for p in self.client.policies() if str(p["name"]).startswith(POLICY_PREFIX)]


@pytest.fixture
def harness(endpoint: LocalEndpoint, local_cluster: LocalCluster) -> Iterator[Harness]:
    """A clean slate per test: no queues, policies, lifecycle, lock or pending notification."""
    assert endpoint.outputs is not None
    session = boto3.Session(
        region_name=endpoint.outputs.Region, aws_access_key_id="local", aws_secret_access_key="local"
    )
    user, password = local_cluster.credentials
    client = ManagementClient(local_cluster.nodes[0].management_url, user, password)
    h = Harness(endpoint, local_cluster, endpoint.outputs, session, client)
    _clean(h)
    handlers = dict(endpoint.dispatcher.handlers)
    try:
        yield h
    finally:
        endpoint.dispatcher.handlers.update(handlers)  # undo a test's fault injection
        h.stop_running()


@pytest.fixture
def cli(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> Harness:
    """The harness, with the CLI's `--local` discovery finding the test's endpoint."""
    monkeypatch.setattr(local_endpoint, "local_outputs", lambda base_dir: harness.outputs)
    return harness


def _clean(h: Harness) -> None:
    for q in h.client.queues():
        h.client.request("DELETE", f"queues/{quote(q['vhost'], safe='')}/{quote(q['name'], safe='')}")
    for p in h.client.policies():
        h.client.delete_policy(p["vhost"], p["name"])
    h.client.delete_global_parameter(LOCK_PARAMETER)  # a stopped execution's, a test's CLI lock
    table = h.table
    for item in table.scan(ProjectionExpression="pk, sk")["Items"]:
        table.delete_item(Key={"pk": item["pk"], "sk": item["sk"]})
    sqs = h.aws("sqs")
    while messages := sqs.receive_message(
        QueueUrl=h.outputs.NotificationQueueUrl, MaxNumberOfMessages=10
    ).get("Messages"):
        for message in messages:
            sqs.delete_message(
                QueueUrl=h.outputs.NotificationQueueUrl, ReceiptHandle=message["ReceiptHandle"]
            )
    assert not table.get_item(Key={"pk": cluster_pk(h.outputs.ClusterName), "sk": "lock"}).get("Item")


def spread(distribution: dict[str, int]) -> int:
    return max(distribution.values()) - min(distribution.values())


@pytest.fixture
def asl_path() -> Path:
    return Path(__file__).resolve().parents[2] / "statemachine" / "balancer.asl.json"
