"""What every handler shares: the powertools stack, error naming, the cluster connection, the store.

A handler is ``@task`` around one function of ``(event, context) -> dict``. ``task`` is the fixed stack
of the cookbook this project copies (Logger with the execution's name as correlation id -> Tracer ->
Metrics), plus the translation of core errors into the names the state machine's Retry/Catch match:
``ManagementUnavailable`` (5xx, timeouts; retried with backoff) and ``InvalidInput``.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Literal

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.errors import InvalidInput, ManagementUnavailable
from lambdas.settings import settings
from lambdas.ssm_eval import SsmEval
from lambdas.store import Store
from queue_balancer import eval_document
from queue_balancer.counts import AmqpCounter, discover_amqp
from queue_balancer.errors import ConfigurationError, ManagementError
from queue_balancer.leader_transfer import RaLeaderTransfer
from queue_balancer.maintenance import DrainedReader, drained_reader
from queue_balancer.management import ManagementClient
from queue_balancer.member_changes import MemberChanger, member_changer
from queue_balancer.member_moves import MemberMover
from queue_balancer.model import JsonDict
from queue_balancer.movers import Mover, MoveSettings
from queue_balancer.movers.ports import LeaderTransfer, StreamTransfer
from queue_balancer.stream_transfer import StreamLeaderTransfer
from queue_balancer.workflow.ports import ClosableCounter, ClusterApi, LifecycleStore

# The stack sets POWERTOOLS_SERVICE_NAME/POWERTOOLS_METRICS_NAMESPACE (docs/aws-contract.md); the same
# values are the defaults here, so a handler imported before its environment is set still names them.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "queue-balancer"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "QueueBalancer"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
# Only ReportRun and ControlCheck publish metrics; the others need not say so on every call.
warnings.filterwarnings("ignore", message="No application metrics to publish")

CORRELATION_ID_PATH = "execution"
"""Every Task's Parameters pass ``"execution.$": "$$.Execution.Name"``: the logs' correlation id."""

Handler = Callable[[JsonDict, LambdaContext], JsonDict]


def translate_errors(function: Handler) -> Handler:
    """Give core errors the names the ASL's Retry and Catch match."""

    @functools.wraps(function)
    def wrapper(event: JsonDict, context: LambdaContext) -> JsonDict:
        try:
            return function(event, context)
        except ManagementError as exc:
            if exc.status is None or exc.status >= 500:
                raise ManagementUnavailable(str(exc)) from exc
            raise
        except ConfigurationError as exc:
            raise InvalidInput(str(exc)) from exc

    return wrapper


def task(function: Handler) -> Handler:
    """The fixed handler stack: Logger (correlation id) -> Tracer -> Metrics -> error names."""
    stacked = translate_errors(function)
    stacked = metrics.log_metrics(stacked)
    stacked = tracer.capture_lambda_handler(stacked)
    result: Handler = logger.inject_lambda_context(correlation_id_path=CORRELATION_ID_PATH)(stacked)
    return result


# ---- connections ---------------------------------------------------------------------------------


AwsService = Literal["ssm", "ec2", "secretsmanager"]
"""The services the handlers reach through ``aws``; boto3's stubs type a client by its service name."""


@functools.cache
def aws(service: AwsService) -> Any:
    """One boto3 client per service and container (they are thread-safe); AWS_ENDPOINT_URL applies.

    All from boto3's default session, so a container loads botocore's endpoint data once, not once per
    client: on a cold start that is most of a client's cost (seconds on a busy 2-core machine)."""
    return boto3.client(service)


@functools.cache
def _secrets() -> parameters.SecretsProvider:
    """powertools' secrets cache on the shared session (its default provider opens a session of its own)."""
    return parameters.SecretsProvider(boto3_client=aws("secretsmanager"))


@dataclass(frozen=True)
class EvalWindow:
    """What a RunBatch slice lets an SSM eval spend: the seconds of its budget left, and whether it was
    asked to stop (then no further command goes out)."""

    seconds_left: Callable[[], float]
    stopping: Callable[[], bool]


_eval_window: ContextVar[EvalWindow | None] = ContextVar("eval_window", default=None)


@contextmanager
def eval_window(window: EvalWindow) -> Iterator[None]:
    """Bound every SSM eval made while the block runs by ``window``."""
    token = _eval_window.set(window)
    try:
        yield
    finally:
        _eval_window.reset(token)


def _ssm_eval(
    document: str, tag_key: str, tag_value: str, running_nodes: Callable[[], list[str]], expression: str
) -> str:
    """``rabbitmqctl eval`` through SSM on a node the management API reports running, within the
    slice's ``eval_window`` if any; the SSM and EC2 clients are made on the first call, so the handlers
    that never transfer a quorum leader (most of them) never pay for them on a cold start."""
    run = SsmEval(aws("ssm"), aws("ec2"), tag_key, tag_value, document, running_nodes)
    window = _eval_window.get()
    if window is not None:
        run = replace(run, window=window.seconds_left, stopping=window.stopping)
    return run(expression)


@dataclass(frozen=True)
class ClusterAccess:
    """The cluster: its management API, ``rabbitmqctl eval`` on one node (via SSM) and exact message
    counts over AMQP. A context manager: the AMQP connections close when the handler is done."""

    client: ClusterApi
    leader_transfer: LeaderTransfer
    counter: ClosableCounter
    drained: DrainedReader | None = None
    """Maintenance mode on 3.x (the SSM document's ``drained`` operation); the client's snapshots use it."""
    changer: Callable[[], MemberChanger | None] = lambda: None
    """Quorum member changes for this cluster's generation (asked only by a ``members: true`` run)."""
    stream_transfer: StreamTransfer | None = None
    """Best-effort stream leader moves (a ``move_streams`` run), through the same SSM document."""

    def member_mover(self) -> MemberMover:
        """A MemberMover for a ``members: true`` run: eval through SSM on 3.x, HTTP on 4.x."""
        changer = self.changer()
        if changer is None:
            raise ConfigurationError("this cluster offers no way to change quorum members")
        return MemberMover(self.client, changer, counter=self.counter)

    def mover(self, run_id: str, settings_: MoveSettings | None = None) -> Mover:
        """A Mover whose temporary policies carry ``run_id`` (``derived_run_id``), as the CLI's do."""
        return Mover(
            self.client,
            self.leader_transfer,
            settings_ or MoveSettings(),
            self.counter,
            run_id=run_id,
            drained=self.drained,
            stream_transfer=self.stream_transfer,
        )

    def __enter__(self) -> ClusterAccess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.counter.close()


@dataclass
class Dependencies:
    """Where every handler gets the store and the cluster from: AWS by default, fakes in unit tests."""

    store: Callable[[], LifecycleStore]
    cluster: Callable[[], ClusterAccess]


@functools.cache
def _dynamodb_store() -> LifecycleStore:
    return Store(settings().lifecycle_table)


def _aws_cluster() -> ClusterAccess:
    """Credentials from Secrets Manager (cached 5 minutes by powertools), never logged."""
    config = settings()
    secret = _secrets().get(config.secret_arn, transform="json", max_age=300)
    if not isinstance(secret, dict) or not secret.get("username") or "password" not in secret:
        raise ConfigurationError(f"secret {config.secret_arn} must be JSON with 'username' and 'password'")
    user, password = str(secret["username"]), str(secret["password"])
    client = ManagementClient(config.management_url, user, password, timeout=10)
    document = eval_document.document_name(config.cluster_name)

    def running_nodes() -> list[str]:
        return [str(n["name"]) for n in client.nodes() if n.get("running")]

    run_eval = functools.partial(_ssm_eval, document, config.ssm_tag_key, config.ssm_tag_value, running_nodes)
    host, port = discover_amqp(config.management_url, client.overview(), config.amqp_port)
    counter = AmqpCounter(host, port, user, password, on_unreachable=logger.warning)
    return ClusterAccess(
        client,
        RaLeaderTransfer(run_eval),
        counter,
        drained=drained_reader(run_eval),
        changer=lambda: member_changer(client, run_eval),
        stream_transfer=StreamLeaderTransfer(run_eval),
    )


_serving = [Dependencies(store=_dynamodb_store, cluster=_aws_cluster)]
"""The dependencies in use: the last one; ``inject`` pushes and pops."""


def store() -> LifecycleStore:
    """The lifecycle table of this balancer."""
    return _serving[-1].store()


def cluster(*, maintenance: bool = False) -> ClusterAccess:
    """A fresh connection to the balanced cluster (close it with ``with``).

    ``maintenance``: its snapshots mark drained nodes, on 3.x through the eval document's ``drained``
    operation, for the functions that plan (LoadQueues, VerifyRound); only a role with the contract's
    ``EVAL_ACCESS`` may send it (running_nodes reads /api/nodes alone, so no eval runs inside another)."""
    access = _serving[-1].cluster()
    if maintenance and isinstance(access.client, ManagementClient):
        access.client.drained = access.drained
    return access


@contextmanager
def inject(dependencies: Dependencies) -> Iterator[None]:
    """Serve ``dependencies`` to the handlers while the block runs (the unit tests' fakes)."""
    _serving.append(dependencies)
    try:
        yield
    finally:
        _serving.remove(dependencies)


def reset() -> None:
    """Forget everything cached from the environment (the local endpoint rebinds it between runs)."""
    settings.cache_clear()
    _dynamodb_store.cache_clear()
    aws.cache_clear()
    _secrets.cache_clear()
    parameters.clear_caches()
