"""The local AWS endpoint: the real state machine, executed by moto on 127.0.0.1, next to the local cluster.

moto's server (pinned to 5.2.x: the patches below touch its private parts) runs in its own process with
Step Functions execution switched on (moto's port of the ASL interpreter, JSONPath mode) and the
no-Docker Lambda backend, whose ``invoke`` is bound to a dispatcher: function name -> the handler in
``lambdas/`` that the real function runs. A handler's exception becomes a function error carrying its
``errorType``, so the ASL's Retry and Catch match exactly as on AWS. Handlers reach DynamoDB, SNS,
Secrets Manager and SSM of the same endpoint through ``AWS_ENDPOINT_URL``: their code has no local
branches.

The endpoint is provisioned like the BalancerStack: the lifecycle table, the notification topic (with an
SQS queue subscribed, so a demo or a test can read the notifications), the admin secret, one Lambda
function per ``${<Name>FunctionArn}`` of the ASL, the state machine from the real ASL file with the
placeholders substituted, and a (disabled) schedule rule. The cluster's nodes appear as EC2 instances
with the contract's tag, and SSM Run Command on them is emulated for exactly the one command the
Lambdas send (``rabbitmqctl eval <expression>``), which runs on the matching local node.

``start_endpoint``/``stop_endpoint`` manage the detached process for ``queue-balancer local up/down``
(pid file, log and outputs in the cluster's base directory); ``LocalEndpoint`` is the same endpoint
in the current process, for the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from queue_balancer.errors import BalancerError
from queue_balancer.local.cluster import LocalCluster, LocalClusterConfig, LocalClusterError, LocalNode

DEFAULT_PORT = 4766
"""Not the default port of anything we know of (moto uses 5000, LocalStack 4566)."""
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
NAME = "queue-balancer-local"
CLUSTER_NAME = "local"
SSM_TAG_KEY = "queue-balancer:cluster"
NODE_TAG_KEY = "queue-balancer:node"
ENDPOINT_FILE = "endpoint.json"
PID_FILE = "endpoint.pid"
LOG_FILE = "endpoint.log"
ProvisionedService = Literal[
    "dynamodb", "ec2", "events", "iam", "lambda", "secretsmanager", "sns", "sqs", "stepfunctions"
]
"""What the endpoint provisions; boto3's stubs type a client by its service name."""
ENV_CREDENTIALS = "QUEUE_BALANCER_ENDPOINT_CREDENTIALS"
ASL_PATH = Path(__file__).resolve().parents[2] / "statemachine" / "balancer.asl.json"
PLACEHOLDER = re.compile(r"\$\{(\w+)FunctionArn\}")
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


class LocalEndpointError(BalancerError):
    """The local endpoint could not be started, reached or stopped; the message says what to do."""


# ---- the ASL and its functions ---------------------------------------------------------------------


def function_names(definition: str) -> list[str]:
    """The ``<Name>`` of every ``${<Name>FunctionArn}`` placeholder, in order of first appearance."""
    return list(dict.fromkeys(PLACEHOLDER.findall(definition)))


def snake(name: str) -> str:
    """``StartMove`` -> ``start_move``: the module of the function's handler (as the stack names it)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def handler_path(name: str) -> str:
    return f"lambdas.{snake(name)}.handler"


def load_handler(name: str) -> Callable[[Any, Any], Any]:
    module_name, attribute = handler_path(name).rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LocalEndpointError(f"${{{name}FunctionArn}} has no module {module_name}: {exc}") from exc
    handler: Callable[[Any, Any], Any] = getattr(module, attribute)
    return handler


def substitute(definition: str, values: Mapping[str, str]) -> str:
    """Replace ``${Key}`` placeholders; an unknown one is an error, as in CloudFormation."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise LocalEndpointError(f"the ASL has a placeholder ${{{key}}} the local endpoint does not know")
        return values[key]

    return re.sub(r"\$\{(\w+)\}", value, definition)


# ---- the Lambda dispatcher -------------------------------------------------------------------------


@dataclass(frozen=True)
class InvocationContext:
    """The parts of the Lambda context object powertools and the handlers read."""

    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    log_group_name: str = ""
    log_stream_name: str = ""

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@dataclass
class Dispatcher:
    """Function name -> handler; moto's no-Docker Lambda backend calls ``invoke`` for every invocation."""

    handlers: dict[str, Callable[[Any, Any], Any]] = field(default_factory=dict)
    calls: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=10_000))
    """(function, "ok" | errorType) of the latest invocations, for the smoke test."""

    def invoke(self, function_name: str, body: bytes | str | None, response_headers: dict[str, str]) -> bytes:
        name = function_name.split(":")[6] if function_name.startswith("arn:") else function_name
        handler = self.handlers.get(name)
        if handler is None:
            response_headers["x-amz-function-error"] = "Unhandled"
            self.calls.append((name, "ResourceNotFound"))
            return _error_document("ResourceNotFound", f"no handler is bound to function {name}")
        try:
            event = json.loads(body or b"{}")
            result = handler(event, InvocationContext(function_name=name))
        except Exception as exc:  # the Lambda runtime's contract: any exception is a function error
            response_headers["x-amz-function-error"] = "Unhandled"
            self.calls.append((name, type(exc).__name__))
            return _error_document(type(exc).__name__, str(exc), traceback.format_exception(exc))
        self.calls.append((name, "ok"))
        return json.dumps(result).encode()


def _error_document(error_type: str, message: str, trace: list[str] | None = None) -> bytes:
    """What the Python Lambda runtime returns for an unhandled exception."""
    document = {"errorMessage": message, "errorType": error_type, "stackTrace": trace or []}
    return json.dumps(document).encode()


# ---- SSM Run Command on the local nodes -------------------------------------------------------------


@dataclass
class LocalRunCommand:
    """Runs ``rabbitmqctl eval <expression>`` sent to an instance on the local node that instance stands for.

    Nothing else: any other command line fails, as it would if the node had no such program.
    """

    cluster: LocalCluster
    instances: dict[str, LocalNode] = field(default_factory=dict)

    def run(self, instance_id: str, commands: list[str]) -> tuple[str, str, str]:
        """(status, stdout, stderr) as SSM reports them."""
        node = self.instances.get(instance_id)
        if node is None:
            return "Failed", "", f"instance {instance_id} is not a node of the local cluster"
        out: list[str] = []
        for line in commands:
            words = shlex.split(line)
            if len(words) != 3 or words[:2] != ["rabbitmqctl", "eval"]:
                return (
                    "Failed",
                    "\n".join(out),
                    f"the local endpoint runs only `rabbitmqctl eval <expression>`, not {line[:80]!r}",
                )
            try:
                out.append(self.cluster.eval_erlang(words[2], node=node))
            except LocalClusterError as exc:
                return "Failed", "\n".join(out), str(exc)
        return "Success", "\n".join(out) + "\n", ""


# ---- moto, configured and patched ------------------------------------------------------------------


class _MotoPatches:
    """Process-wide changes to moto (config, MOTO_PORT, three private methods), undone by ``restore``."""

    def __init__(self, port: int, dispatcher: Dispatcher, run_command: LocalRunCommand) -> None:
        from moto.awslambda_simple.models import LambdaSimpleBackend
        from moto.core.config import default_user_config
        from moto.ssm.models import SimpleSystemManagerBackend

        self._undo: list[Callable[[], None]] = []
        saved_sfn, saved_lambda = default_user_config.get("stepfunctions"), default_user_config.get("lambda")
        default_user_config["stepfunctions"] = {"execute_state_machine": True}
        default_user_config["lambda"] = {"use_docker": False}

        def restore_config() -> None:
            default_user_config["stepfunctions"] = saved_sfn or {"execute_state_machine": False}
            default_user_config["lambda"] = saved_lambda or {"use_docker": True}

        self._undo.append(restore_config)
        self._set_env("MOTO_PORT", str(port))

        original_invoke = LambdaSimpleBackend.invoke

        def invoke(
            backend: Any,
            function_name: str,
            qualifier: str | None,
            body: Any,
            headers: Any,
            response_headers: Any,
        ) -> bytes:
            return dispatcher.invoke(function_name, body, response_headers)

        setattr(LambdaSimpleBackend, "invoke", invoke)  # noqa: B010 - patching moto on purpose
        self._undo.append(lambda: setattr(LambdaSimpleBackend, "invoke", original_invoke))

        original_send = SimpleSystemManagerBackend.send_command

        def send_command(backend: Any, **kwargs: Any) -> Any:
            command = original_send(backend, **kwargs)
            if command.document_name == "AWS-RunShellScript":
                script = [str(c) for c in (command.parameters or {}).get("commands", [])]
                for invocation in command.invocations:
                    status, out, err = run_command.run(invocation["InstanceId"], script)
                    invocation.update(
                        {
                            "Status": status,
                            "StatusDetails": status,
                            "ResponseCode": 0 if status == "Success" else 1,
                            "StandardOutputContent": out,
                            "StandardErrorContent": err,
                        }
                    )
                    if status != "Success":
                        command.status = "Failed"
            return command

        setattr(SimpleSystemManagerBackend, "send_command", send_command)  # noqa: B010
        self._undo.append(lambda: setattr(SimpleSystemManagerBackend, "send_command", original_send))
        self._patch_start_execution()
        for noisy in ("werkzeug", "moto.stepfunctions"):
            self._set_level(noisy, logging.CRITICAL)

    def _patch_start_execution(self) -> None:
        """moto 5.2 passes ``states:startExecution``'s parameters to boto3 as written in the ASL
        (``StateMachineArn``, ``Name``, ``Input``, as AWS documents them), but boto3's names are
        ``stateMachineArn``, ``name``, ``input``: rename them, as AWS's own integration does."""
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (
            StateTaskServiceSfn,
        )

        original = StateTaskServiceSfn._normalise_parameters

        def normalise(service: Any, parameters: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            original(service, parameters, *args, **kwargs)
            for name in ("StateMachineArn", "Name", "Input", "TraceHeader"):
                if name in parameters:
                    parameters[name[0].lower() + name[1:]] = parameters.pop(name)

        setattr(StateTaskServiceSfn, "_normalise_parameters", normalise)  # noqa: B010
        self._undo.append(lambda: setattr(StateTaskServiceSfn, "_normalise_parameters", original))

    def _set_env(self, key: str, value: str) -> None:
        previous = os.environ.get(key)
        os.environ[key] = value
        self._undo.append(lambda: _restore_env(key, previous))

    def set_env(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._set_env(key, value)

    def _set_level(self, name: str, level: int) -> None:
        logger = logging.getLogger(name)
        previous = logger.level
        logger.setLevel(level)
        self._undo.append(lambda: logger.setLevel(previous))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _restore_env(key: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = previous


# ---- the endpoint ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    """What the CLI reads: the BalancerStack's outputs, plus where the local endpoint is."""

    StateMachineArn: str
    LifecycleTableName: str
    NotificationTopicArn: str
    ScheduleRuleName: str
    ClusterName: str
    EndpointUrl: str
    NotificationQueueUrl: str
    Region: str = REGION

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outputs:
        return cls(**{k: str(data[k]) for k in cls.__dataclass_fields__ if k in data})


class LocalEndpoint:
    """moto's server in this process, patched and provisioned; ``stop`` undoes every process-wide change."""

    def __init__(self, port: int, cluster_config: LocalClusterConfig, *, asl_path: Path = ASL_PATH) -> None:
        self.port = port
        self.cluster = LocalCluster(cluster_config)
        self.asl_path = asl_path
        self.url = endpoint_url_for(port)
        self.dispatcher = Dispatcher()
        self.run_command = LocalRunCommand(self.cluster)
        self.outputs: Outputs | None = None
        self._patches: _MotoPatches | None = None
        self._server: Any = None

    def __enter__(self) -> LocalEndpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Outputs:
        if not _port_free(self.port):
            raise LocalEndpointError(
                f"port {self.port} on 127.0.0.1 is in use; choose another with --endpoint-port"
            )
        definition = self.asl_path.read_text()
        names = function_names(definition)
        self.dispatcher.handlers.update({name: load_handler(name) for name in names})
        from moto.server import ThreadedMotoServer

        self._patches = _MotoPatches(self.port, self.dispatcher, self.run_command)
        self._patches.set_env(self.function_environment(secret_arn="", topic_arn="") | self._aws_env())
        try:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            self.outputs = self._provision(definition, names)
        except BaseException:
            self.stop()
            raise
        return self.outputs

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._patches is not None:
            from moto.moto_api._internal.models import moto_api_backend

            moto_api_backend.reset()  # the next endpoint in this process starts from nothing
            self._patches.restore()
            self._patches = None
        _reset_handler_caches()

    def _aws_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": REGION, **DUMMY_CREDENTIALS}

    def function_environment(self, *, secret_arn: str, topic_arn: str) -> dict[str, str]:
        """The environment the BalancerStack gives every function (docs/aws-contract.md)."""
        return {
            "CLUSTER_NAME": CLUSTER_NAME,
            "RABBITMQ_MANAGEMENT_URL": self.cluster.nodes[0].management_url,
            "RABBITMQ_AMQP_PORT": str(self.cluster.nodes[0].amqp_port),
            "RABBITMQ_SECRET_ARN": secret_arn,
            "RABBITMQ_CLI_SSM_TAG_KEY": SSM_TAG_KEY,
            "RABBITMQ_CLI_SSM_TAG_VALUE": CLUSTER_NAME,
            "LIFECYCLE_TABLE": NAME,
            "NOTIFICATION_TOPIC_ARN": topic_arn,
            "POWERTOOLS_SERVICE_NAME": "queue-balancer",
            "POWERTOOLS_METRICS_NAMESPACE": "QueueBalancer",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }

    def _provision(self, definition: str, names: list[str]) -> Outputs:
        import boto3

        session = boto3.Session(region_name=REGION, aws_access_key_id="local", aws_secret_access_key="local")

        def client(service: ProvisionedService) -> Any:
            return session.client(service, endpoint_url=self.url)

        role = client("iam").create_role(
            RoleName=NAME, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
        )["Role"]["Arn"]
        client("dynamodb").create_table(
            TableName=NAME,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        sns, sqs = client("sns"), client("sqs")
        topic = sns.create_topic(Name=f"{NAME}-notifications")["TopicArn"]
        queue_url = sqs.create_queue(QueueName=f"{NAME}-notifications")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        user, password = self.cluster.credentials
        secret = client("secretsmanager").create_secret(
            Name=f"{NAME}/rabbitmq-admin", SecretString=json.dumps({"username": user, "password": password})
        )["ARN"]
        self._register_nodes(client("ec2"))
        environment = self.function_environment(secret_arn=secret, topic_arn=topic)
        assert self._patches is not None
        self._patches.set_env(environment)
        _reset_handler_caches()
        lambdas = client("lambda")
        arns = {
            name: lambdas.create_function(
                FunctionName=f"{NAME}-{snake(name).replace('_', '-')}",
                Runtime="python3.12",
                Role=role,
                Handler=handler_path(name),
                Code={"ZipFile": b"handlers are dispatched in-process by the local endpoint"},
                Environment={"Variables": environment},
                Timeout=300,
            )["FunctionArn"]
            for name in names
        }
        self.dispatcher.handlers = {
            arn.rsplit(":", 1)[1]: self.dispatcher.handlers[name] for name, arn in arns.items()
        }
        substitutions = {f"{name}FunctionArn": arn for name, arn in arns.items()}
        substitutions.update({"LifecycleTableName": NAME, "NotificationTopicArn": topic})
        machine = client("stepfunctions").create_state_machine(
            name=NAME, definition=substitute(definition, substitutions), roleArn=role
        )["stateMachineArn"]
        rule = f"{NAME}-schedule"
        events = client("events")
        events.put_rule(
            Name=rule,
            ScheduleExpression="rate(1 day)",
            State="DISABLED",
            Description="local stand-in for the BalancerStack's schedule (moto never fires it)",
        )
        events.put_targets(
            Rule=rule,
            Targets=[
                {
                    "Id": "balancer",
                    "Arn": machine,
                    "RoleArn": role,
                    "Input": json.dumps({"action": "balance"}),
                }
            ],
        )
        return Outputs(
            StateMachineArn=machine,
            LifecycleTableName=NAME,
            NotificationTopicArn=topic,
            ScheduleRuleName=rule,
            ClusterName=CLUSTER_NAME,
            EndpointUrl=self.url,
            NotificationQueueUrl=queue_url,
        )

    def _register_nodes(self, ec2: Any) -> None:
        """One EC2 instance per node, tagged like the ClusterStack's, for the SSM Run Command port."""
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        for node in self.cluster.nodes:
            tags = [{"Key": SSM_TAG_KEY, "Value": CLUSTER_NAME}, {"Key": NODE_TAG_KEY, "Value": node.name}]
            instance = ec2.run_instances(
                ImageId=image,
                MinCount=1,
                MaxCount=1,
                InstanceType="t3.micro",
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )["Instances"][0]["InstanceId"]
            self.run_command.instances[instance] = node


def _reset_handler_caches() -> None:
    """The handlers cache settings, clients and the secret per process; the environment just changed."""
    with contextlib.suppress(ModuleNotFoundError):
        importlib.import_module("lambdas.common").reset()


def endpoint_url_for(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---- the detached process (`queue-balancer local up` / `local down`) -----------------------------------


def start_endpoint(
    base_dir: Path, port: int, cluster_config: LocalClusterConfig, *, timeout: float = 60.0
) -> Outputs:
    """Start the endpoint as a detached process next to the cluster in ``base_dir``; idempotent.

    Returns the outputs once the endpoint answers and is provisioned. The admin credentials reach the
    child through its environment, never its command line.
    """
    base_dir = Path(base_dir).expanduser().absolute()
    base_dir.mkdir(parents=True, exist_ok=True)
    running = _running_pid(base_dir)
    if running is not None:
        return local_outputs(base_dir)
    (base_dir / ENDPOINT_FILE).unlink(missing_ok=True)
    env = dict(os.environ)
    env[ENV_CREDENTIALS] = json.dumps(
        {"user": cluster_config.user, "password": cluster_config.password, "layout": cluster_config.layout()}
    )
    project = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(base_dir / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "queue_balancer.local.endpoint",
                "serve",
                "--base-dir",
                str(base_dir),
                "--port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=project,
            start_new_session=True,
            close_fds=True,
        )
    (base_dir / PID_FILE).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while True:
        outputs = _read_outputs(base_dir)
        if outputs is not None:
            return outputs
        if process.poll() is not None:
            (base_dir / PID_FILE).unlink(missing_ok=True)
            raise LocalEndpointError(
                f"the local AWS endpoint exited with code {process.returncode} at start:\n{_log_tail(base_dir)}"
            )
        if time.monotonic() > deadline:
            stop_endpoint(base_dir)
            raise LocalEndpointError(
                f"the local AWS endpoint did not come up within {timeout:g} s:\n{_log_tail(base_dir)}"
            )
        time.sleep(0.1)


def stop_endpoint(base_dir: Path, *, timeout: float = 15.0) -> bool:
    """Stop the endpoint started from ``base_dir`` (and nothing else); True if one was running."""
    base_dir = Path(base_dir).expanduser().absolute()
    pid = _running_pid(base_dir)  # ownership is checked once, before any signal
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _await_exit(pid, time.monotonic() + timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _await_exit(pid, time.monotonic() + 5)
    for name in (PID_FILE, ENDPOINT_FILE):
        (base_dir / name).unlink(missing_ok=True)
    return pid is not None


def _await_exit(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` is gone (reaping it if it is our child); False at the deadline."""
    while True:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True  # exited; someone else's child, left for its parent to reap
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def local_outputs(base_dir: Path) -> Outputs:
    """The outputs of the endpoint running for ``base_dir``; an error saying how to start one otherwise."""
    base_dir = Path(base_dir).expanduser().absolute()
    outputs = _read_outputs(base_dir) if _running_pid(base_dir) is not None else None
    if outputs is None:
        raise LocalEndpointError(
            f"no local AWS endpoint is running for {base_dir}: start it with `queue-balancer local up`"
        )
    return outputs


def endpoint_url(base_dir: Path) -> str:
    """URL of the endpoint running for ``base_dir`` (what ``--local`` commands talk to)."""
    return local_outputs(base_dir).EndpointUrl


def _read_outputs(base_dir: Path) -> Outputs | None:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return Outputs.from_dict(json.loads((base_dir / ENDPOINT_FILE).read_text()))
    return None


def _running_pid(base_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int((base_dir / PID_FILE).read_text().strip())
        if _owned(pid, base_dir):
            return pid
    return None


def _owned(pid: int, base_dir: Path) -> bool:
    """Alive, not a zombie, and our endpoint for this base_dir (a recycled pid is never signalled)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode(errors="replace").split("\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and "queue_balancer.local.endpoint" in words and str(base_dir) in words


def _log_tail(base_dir: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join((base_dir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def serve(base_dir: Path, port: int) -> None:
    """The detached process: run the endpoint until SIGTERM, with its outputs in ``endpoint.json``."""
    raw = json.loads(os.environ.pop(ENV_CREDENTIALS, "{}"))
    config = LocalClusterConfig(
        base_dir=base_dir,
        user=raw.get("user", "admin"),
        password=raw.get("password", "admin"),
        **raw.get("layout", {}),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LocalEndpoint(port, config) as endpoint:
        assert endpoint.outputs is not None
        target = base_dir / ENDPOINT_FILE
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(endpoint.outputs.to_dict(), indent=2) + "\n")
        partial.replace(target)
        print(f"local AWS endpoint on {endpoint.url} (pid {os.getpid()})", flush=True)
        stop.wait()
    (base_dir / ENDPOINT_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m queue_balancer.local.endpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the endpoint in the foreground (what `local up` starts)")
    run.add_argument("--base-dir", type=Path, required=True)
    run.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    serve(args.base_dir.expanduser().absolute(), args.port)
    return 0


@contextlib.contextmanager
def running(port: int, cluster_config: LocalClusterConfig) -> Iterator[LocalEndpoint]:
    """``with running(port, config) as endpoint:`` - the endpoint in this process, always stopped."""
    endpoint = LocalEndpoint(port, cluster_config)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


if __name__ == "__main__":
    sys.exit(main())
