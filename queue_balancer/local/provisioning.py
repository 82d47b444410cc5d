"""The local endpoint in this process: moto's server, patched, and provisioned like the BalancerStack.

Provisioned: the lifecycle table, the notification topic (with an SQS queue subscribed, so a demo or a
test can read the notifications), the admin secret, one Lambda function per ``${<Name>FunctionArn}`` of
the ASL (the contract in ``queue_balancer.contract``), the state machine from the real ASL file with the
placeholders substituted, and a (disabled) schedule rule. The cluster's nodes appear as EC2 instances
with the contract's tag. Handlers reach DynamoDB, SNS, Secrets Manager and SSM of the same endpoint
through ``AWS_ENDPOINT_URL``: their code has no local branches.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from queue_balancer import eval_document
from queue_balancer.contract import (
    NODE_TAG_KEY,
    TABLE_PLACEHOLDER,
    TOPIC_PLACEHOLDER,
    FunctionEnvironment,
    function_names,
    function_placeholder,
    function_resource_name,
    handler_path,
    substitute,
    table_definition,
)
from queue_balancer.errors import BalancerError
from queue_balancer.local.aws_emulation import REGION, Dispatcher, LocalRunCommand, MotoPatches
from queue_balancer.local.cluster import LocalCluster, LocalClusterConfig

DEFAULT_PORT = 4766
"""Not the default port of anything we know of (moto uses 5000, LocalStack 4566)."""
NAME = "queue-balancer-local"
CLUSTER_NAME = "local"
SSM_TAG_KEY = "queue-balancer:cluster"
ASL_PATH = Path(__file__).resolve().parents[2] / "statemachine" / "balancer.asl.json"
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
ProvisionedService = Literal[
    "dynamodb", "ec2", "events", "iam", "lambda", "secretsmanager", "sns", "sqs", "ssm", "stepfunctions"
]
"""What the endpoint provisions; boto3's stubs type a client by its service name."""


class LocalEndpointError(BalancerError):
    """The local endpoint could not be started, reached or stopped; the message says what to do."""


def load_handler(name: str) -> Callable[[Any, Any], Any]:
    """The handler the function ``name`` runs (the contract's ``lambdas.<snake>.handler``)."""
    module_name, attribute = handler_path(name).rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LocalEndpointError(
            f"${{{function_placeholder(name)}}} has no module {module_name}: {exc}"
        ) from exc
    handler: Callable[[Any, Any], Any] = getattr(module, attribute)
    return handler


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
        self._patches: MotoPatches | None = None
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

        self._patches = MotoPatches(self.port, self.dispatcher, self.run_command)
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
        """The environment the BalancerStack gives every function (the contract), plus no tracing here."""
        node = self.cluster.nodes[0]
        contract = FunctionEnvironment(
            cluster_name=CLUSTER_NAME,
            management_url=node.management_url,
            secret_arn=secret_arn,
            ssm_tag_key=SSM_TAG_KEY,
            ssm_tag_value=CLUSTER_NAME,
            lifecycle_table=NAME,
            notification_topic_arn=topic_arn,
        )  # no AMQP port: the handlers find the node's listener through the management API
        return contract.to_env() | {"POWERTOOLS_TRACE_DISABLED": "true"}

    def _provision(self, definition: str, names: list[str]) -> Outputs:
        import boto3

        session = boto3.Session(region_name=REGION, aws_access_key_id="local", aws_secret_access_key="local")

        def client(service: ProvisionedService) -> Any:
            return session.client(service, endpoint_url=self.url)

        role = client("iam").create_role(
            RoleName=NAME, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
        )["Role"]["Arn"]
        client("dynamodb").create_table(**table_definition(NAME))
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
        client("ssm").create_document(
            Name=eval_document.document_name(CLUSTER_NAME),
            Content=json.dumps(eval_document.content()),
            DocumentType="Command",
            DocumentFormat="JSON",
        )
        environment = self.function_environment(secret_arn=secret, topic_arn=topic)
        assert self._patches is not None
        self._patches.set_env(environment)
        _reset_handler_caches()
        lambdas = client("lambda")
        arns = {
            name: lambdas.create_function(
                FunctionName=function_resource_name(NAME, name),
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
        substitutions = {function_placeholder(name): arn for name, arn in arns.items()}
        substitutions.update({TABLE_PLACEHOLDER: NAME, TOPIC_PLACEHOLDER: topic})
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


@contextlib.contextmanager
def running(port: int, cluster_config: LocalClusterConfig) -> Iterator[LocalEndpoint]:
    """``with running(port, config) as endpoint:`` - the endpoint in this process, always stopped."""
    endpoint = LocalEndpoint(port, cluster_config)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()
