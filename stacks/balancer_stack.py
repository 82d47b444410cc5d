"""BalancerStack: the balancing workflow on AWS, against the ClusterStack or any existing cluster.

The state machine comes from ``statemachine/balancer.asl.json``; its ``${<Name>FunctionArn}`` placeholders
name the Lambda functions, one per placeholder, handler ``lambdas.<snake_name>.handler``, all sharing one
code asset (``lambdas/`` + ``queue_balancer/`` + runtime dependencies). See docs/aws-contract.md.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsii
from aws_cdk import (
    ArnFormat,
    AssetHashType,
    BundlingOptions,
    CfnOutput,
    Duration,
    ILocalBundling,
    RemovalPolicy,
    Stack,
)
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_stepfunctions as sfn
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from stacks import REPO_ROOT
from stacks.cluster_stack import check_cluster_name, subnets_by_id
from stacks.topics import encrypted_topic

if TYPE_CHECKING:
    from stacks.cluster_stack import ClusterStack

DEFAULT_ASL = REPO_ROOT / "statemachine" / "balancer.asl.json"
DEFAULT_LAMBDAS = REPO_ROOT / "lambdas"
DEFAULT_CORE = REPO_ROOT / "queue_balancer"
PYPROJECT = REPO_ROOT / "pyproject.toml"

RUNTIME = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE = lambda_.Architecture.ARM_64
PIP_PLATFORM = "manylinux2014_aarch64"
# The Lambda runtime ships boto3 and botocore as a matching pair: a bundled botocore would shadow the
# runtime's and break that pairing, so it is left out of the asset.
PROVIDED_BY_RUNTIME = ("boto3", "botocore", "s3transfer")

SERVICE_NAME = "queue-balancer"
METRICS_NAMESPACE = "QueueBalancer"
DEFAULT_SCHEDULE = "0 3 * * ? *"

# CloudFormation replaces exactly "${Key}" for each key of DefinitionSubstitutions and leaves any other
# text alone (aws-cloudformation-resource-providers-stepfunctions, DefinitionProcessor.transformDefinition),
# so a placeholder is "${" + identifier + "}"; prose such as "${...}" in a Comment passes through unchanged.
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
FUNCTION_PLACEHOLDER = re.compile(r"^(\w+)FunctionArn$")
TABLE_PLACEHOLDER = "LifecycleTableName"
TOPIC_PLACEHOLDER = "NotificationTopicArn"


class ContractError(ValueError):
    """The ASL and the handler modules disagree (docs/aws-contract.md); the synth stops with this."""


# --- the contract: functions named by the ASL ----------------------------------------------------------


def snake_case(name: str) -> str:
    """``StartMove`` -> ``start_move``; ``SSMCommand`` -> ``ssm_command``."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def asl_placeholders(asl_text: str) -> set[str]:
    """Every ``${Name}`` of the ASL."""
    return set(PLACEHOLDER.findall(asl_text))


def handler_modules(lambdas_dir: Path) -> set[str]:
    """Modules of ``lambdas_dir`` defining a top-level ``handler`` (helper modules define none)."""
    found = set()
    for path in sorted(lambdas_dir.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            names: list[str] = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            if "handler" in names:
                found.add(path.stem)
                break
    return found


def discover_functions(asl_text: str, lambdas_dir: Path) -> dict[str, str]:
    """``{Name: "lambdas.<snake>.handler"}`` for each ``${<Name>FunctionArn}``; ContractError on mismatch."""
    placeholders = asl_placeholders(asl_text)
    names = sorted(m.group(1) for p in placeholders if (m := FUNCTION_PLACEHOLDER.match(p)))
    unknown = sorted(
        p for p in placeholders - {TABLE_PLACEHOLDER, TOPIC_PLACEHOLDER} if not FUNCTION_PLACEHOLDER.match(p)
    )
    if unknown:
        raise ContractError(
            f"the ASL uses placeholders the stack does not substitute: {', '.join(unknown)} "
            f"(known: <Name>FunctionArn, {TABLE_PLACEHOLDER}, {TOPIC_PLACEHOLDER}; see docs/aws-contract.md)"
        )
    if not lambdas_dir.is_dir():
        raise ContractError(f"the ASL names functions {names} but {lambdas_dir} does not exist")
    modules = handler_modules(lambdas_dir)
    wanted = {snake_case(name): name for name in names}
    without_module = sorted(f"${{{wanted[m]}FunctionArn}} -> {m}.py" for m in set(wanted) - modules)
    without_placeholder = sorted(f"{m}.py" for m in modules - set(wanted))
    problems = []
    if without_module:
        problems.append(
            f"placeholders without a handler module in {lambdas_dir}: {', '.join(without_module)}"
        )
    if without_placeholder:
        problems.append(
            f"handler modules no ${{<Name>FunctionArn}} of the ASL names: {', '.join(without_placeholder)}"
        )
    if problems:
        raise ContractError("; ".join(problems) + " (see docs/aws-contract.md)")
    return {name: f"{lambdas_dir.name}.{snake_case(name)}.handler" for name in names}


# --- the shared code asset -----------------------------------------------------------------------------


def runtime_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The project's runtime dependencies plus its ``aws`` extra, less what the Lambda runtime provides."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("aws", [])]

    def name(requirement: str) -> str:
        return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    return [r for r in wanted if name(r) not in PROVIDED_BY_RUNTIME]


def _source_files(directories: Iterable[Path]) -> list[tuple[str, Path]]:
    files = []
    for directory in directories:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append((f"{directory.name}/{path.relative_to(directory).as_posix()}", path))
    return files


def asset_hash(directories: Sequence[Path], requirements: Sequence[str]) -> str:
    """Changes whenever a source file, a requirement or the target platform does."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(requirements), PIP_PLATFORM, RUNTIME.name]).encode())
    for relative, path in _source_files(directories):
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@jsii.implements(ILocalBundling)
class PipLocalBundling:
    """Bundles without Docker: copies the packages and ``pip install``s the Lambda platform's wheels."""

    def __init__(self, directories: Sequence[Path], requirements: Sequence[str]) -> None:
        self.directories = list(directories)
        self.requirements = list(requirements)

    def try_bundle(self, output_dir: str, *_args: Any, **_kwargs: Any) -> bool:
        out = Path(output_dir)
        for directory in self.directories:
            shutil.copytree(
                directory,
                out / directory.name,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                dirs_exist_ok=True,
            )
        if self.requirements:
            command = [
                sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "--no-compile", "--target", output_dir, "--implementation", "cp", "--python-version",
                RUNTIME.name.removeprefix("python"), "--platform", PIP_PLATFORM, "--only-binary=:all:",
                *self.requirements,
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"bundling the Lambda dependencies failed ({' '.join(command)}):\n{done.stderr[-3000:]}"
                )
            for name in PROVIDED_BY_RUNTIME:
                for leftover in out.glob(f"{name}*"):
                    if leftover.is_dir():
                        shutil.rmtree(leftover)
                    else:
                        leftover.unlink()
        return True


def lambda_code(lambdas_dir: Path, core_dir: Path, requirements: Sequence[str]) -> lambda_.Code:
    """One asset for every function: ``lambdas/`` + ``queue_balancer/`` + the runtime dependencies."""
    directories = [lambdas_dir, core_dir]
    for directory in directories:
        if not directory.is_dir():
            raise ContractError(f"the Lambda asset needs {directory}, which does not exist")
    return lambda_.Code.from_asset(
        str(lambdas_dir),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=asset_hash(directories, requirements),
        bundling=BundlingOptions(
            image=RUNTIME.bundling_image,
            local=PipLocalBundling(directories, requirements),
            command=[
                "bash",
                "-c",
                "echo 'the Lambda asset is bundled locally (pip); Docker is not used'; exit 1",
            ],
        ),
    )


# --- settings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BalancerSettings:
    """What a deployment may choose about the workflow (cdk.json context, see the README, 'Deploy on AWS')."""

    schedule_cron: str | None = None
    notification_email: str | None = None
    function_memory_mb: int = 512
    function_timeout_minutes: int = 5

    def schedule_expression(self) -> str:
        """``cron(...)`` of the schedule (a disabled placeholder when no cron is set)."""
        cron = (self.schedule_cron or DEFAULT_SCHEDULE).strip()
        if cron.startswith("cron(") and cron.endswith(")"):
            cron = cron[5:-1].strip()
        if len(cron.split()) != 6:
            raise ValueError(
                f"scheduleCron {self.schedule_cron!r}: EventBridge cron takes six fields, "
                "e.g. '0 3 * * ? *' (03:00 UTC daily)"
            )
        return f"cron({cron})"


@dataclass(frozen=True)
class ExistingCluster:
    """A cluster not built by this app, named by the context."""

    cluster_name: str
    management_url: str
    secret_arn: str
    vpc_id: str
    subnet_ids: tuple[str, ...] = ()
    security_group_id: str | None = None
    ssm_tag_key: str = "queue-balancer-cluster"
    ssm_tag_value: str | None = None  # the cluster's name


# --- the stack -----------------------------------------------------------------------------------------


class BalancerStack(Stack):
    """Lambdas from the ASL, the state machine, lifecycle table, topic, schedule, dashboard and alarm."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        management_url: str,
        secret: secretsmanager.ISecret | str,
        ssm_tag_key: str,
        ssm_tag_value: str,
        vpc: ec2.IVpc | None = None,
        vpc_id: str | None = None,
        subnets: ec2.SubnetSelection | None = None,
        subnet_ids: Sequence[str] = (),
        security_group: ec2.ISecurityGroup | None = None,
        security_group_id: str | None = None,
        settings: BalancerSettings | None = None,
        asl_path: Path | None = None,
        lambdas_dir: Path | None = None,
        core_dir: Path | None = None,
        requirements: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings or BalancerSettings()
        self.cluster_name = check_cluster_name(cluster_name)
        # Defaults are the repo's files (looked up at call time); tests and experiments may pass others.
        self.asl_path = Path(asl_path or DEFAULT_ASL)
        lambdas_dir = Path(lambdas_dir or DEFAULT_LAMBDAS)
        core_dir = Path(core_dir or DEFAULT_CORE)
        if not self.asl_path.is_file():
            raise ContractError(f"the state machine definition {self.asl_path} does not exist")
        self.handlers = discover_functions(self.asl_path.read_text(), lambdas_dir)

        if vpc is None and not vpc_id:
            raise ValueError("the balancer's Lambdas run in the cluster's VPC: give vpc or vpc_id (vpcId)")
        self.vpc = vpc or ec2.Vpc.from_lookup(self, "ClusterVpc", vpc_id=str(vpc_id))
        if subnets is None:
            subnets = (
                subnets_by_id(self, subnet_ids)
                if subnet_ids
                else ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
            )
        self.subnets = subnets
        self.security_group = self._security_group(security_group, security_group_id)
        self.secret = _import_secret(self, secret) if isinstance(secret, str) else secret

        self.table = self._lifecycle_table()
        self.topic_key, self.topic = encrypted_topic(
            self,
            "NotificationTopic",
            purpose=f"queue balancer runs of {self.cluster_name}",
            email=self.settings.notification_email,
        )
        self.state_machine_name = f"queue-balancer-{cluster_name}"
        self.functions = self._functions(
            management_url,
            ssm_tag_key,
            ssm_tag_value,
            lambda_code(
                lambdas_dir, core_dir, runtime_requirements() if requirements is None else requirements
            ),
        )
        self.state_machine = self._state_machine()
        self.schedule = self._schedule()
        self.failed_runs_alarm = self._failed_runs_alarm()
        self.dashboard = self._dashboard()
        self._outputs()

    # --- construction helpers for app.py --------------------------------------------------------------

    @classmethod
    def for_cluster_stack(
        cls, scope: Construct, construct_id: str, *, cluster: ClusterStack, **kwargs: Any
    ) -> BalancerStack:
        """The balancer of the ClusterStack built by the same app (its values cross as stack references)."""
        return cls(
            scope,
            construct_id,
            cluster_name=cluster.cluster_name,
            management_url=cluster.management_url,
            secret=cluster.admin_secret,
            ssm_tag_key=cluster.ssm_tag_key,
            ssm_tag_value=cluster.ssm_tag_value,
            vpc=cluster.vpc,
            subnets=cluster.node_subnets,
            security_group=cluster.client_security_group,
            **kwargs,
        )

    @classmethod
    def for_existing_cluster(
        cls, scope: Construct, construct_id: str, *, cluster: ExistingCluster, **kwargs: Any
    ) -> BalancerStack:
        """The balancer of a cluster this app did not build (management URL + secret ARN + VPC)."""
        return cls(
            scope,
            construct_id,
            cluster_name=cluster.cluster_name,
            management_url=cluster.management_url,
            secret=cluster.secret_arn,
            ssm_tag_key=cluster.ssm_tag_key,
            ssm_tag_value=cluster.ssm_tag_value or cluster.cluster_name,
            vpc_id=cluster.vpc_id,
            subnet_ids=cluster.subnet_ids,
            security_group_id=cluster.security_group_id,
            **kwargs,
        )

    # --- resources ------------------------------------------------------------------------------------

    def _security_group(self, given: ec2.ISecurityGroup | None, given_id: str | None) -> ec2.ISecurityGroup:
        self.security_group_is_local = given is None
        if given is not None:
            return given
        if given_id:
            return ec2.SecurityGroup.from_security_group_id(self, "LambdaSecurityGroup", given_id)
        return ec2.SecurityGroup(
            self,
            "LambdaSecurityGroup",
            vpc=self.vpc,
            description="queue balancer Lambdas: allow this group on the cluster 15672 (management API)",
            allow_all_outbound=True,
        )

    def _lifecycle_table(self) -> dynamodb.Table:
        return dynamodb.Table(
            self,
            "LifecycleTable",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute="expires_at",
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _function_role(self, ssm_tag_key: str, ssm_tag_value: str) -> iam.Role:
        role = iam.Role(
            self,
            "FunctionRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"queue balancer Lambdas of {self.cluster_name} (docs/aws-contract.md, Permissions)",
        )
        self.secret.grant_read(role)
        role.add_to_policy(
            iam.PolicyStatement(
                sid="LifecycleItems",
                actions=[
                    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                    "dynamodb:Query", "dynamodb:BatchWriteItem",
                ],
                resources=[self.table.table_arn],
            )
        )  # fmt: skip
        role.add_to_policy(
            iam.PolicyStatement(
                sid="RunShellScriptDocument",
                actions=["ssm:SendCommand"],
                resources=[self.format_arn(service="ssm", account="", resource="document",
                                           resource_name="AWS-RunShellScript")],
            )
        )  # fmt: skip
        role.add_to_policy(
            iam.PolicyStatement(
                sid="RunShellScriptOnClusterNodes",
                actions=["ssm:SendCommand"],
                resources=[self.format_arn(service="ec2", resource="instance", resource_name="*")],
                conditions={"StringEquals": {f"ssm:resourceTag/{ssm_tag_key}": ssm_tag_value}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="CommandResultsAndNodeLookup",
                # lambdas/ssm_eval.py picks a running node by its tag with ec2:DescribeInstances.
                actions=["ssm:GetCommandInvocation", "ec2:DescribeInstances"],
                resources=["*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="VpcNetworkInterfaces",
                actions=[
                    "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
                    "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
                ],
                resources=["*"],
            )
        )  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            role,
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="Only actions without resource-level permissions use '*': the VPC network "
                    "interfaces Lambda manages, X-Ray segments, ssm:GetCommandInvocation and "
                    "ec2:DescribeInstances (finding a running node by its tag). ssm:SendCommand on "
                    "instance/* is limited by the condition on the cluster nodes' tag (instances are "
                    "replaced by the Auto Scaling group, their IDs are not known at deploy time).",
                    applies_to=[
                        "Resource::*",
                        {"regex": "/^Resource::arn:<AWS::Partition>:ec2:.*:instance/\\*$/"},
                    ],
                )
            ],
            apply_to_children=True,
        )
        return role

    def _functions(
        self, management_url: str, ssm_tag_key: str, ssm_tag_value: str, code: lambda_.Code
    ) -> dict[str, lambda_.Function]:
        role = self._function_role(ssm_tag_key, ssm_tag_value)
        environment = {
            "CLUSTER_NAME": self.cluster_name,
            "RABBITMQ_MANAGEMENT_URL": management_url,
            "RABBITMQ_SECRET_ARN": self.secret.secret_arn,
            "RABBITMQ_CLI_SSM_TAG_KEY": ssm_tag_key,
            "RABBITMQ_CLI_SSM_TAG_VALUE": ssm_tag_value,
            "LIFECYCLE_TABLE": self.table.table_name,
            "NOTIFICATION_TOPIC_ARN": self.topic.topic_arn,
            "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        }
        functions = {}
        log_groups = []
        for name, handler in self.handlers.items():
            log_group = logs.LogGroup(self, f"{name}Logs", retention=logs.RetentionDays.THREE_MONTHS)
            log_groups.append(log_group)
            functions[name] = lambda_.Function(
                self,
                f"{name}Function",
                description=f"queue balancer ({self.cluster_name}): {name} task of the state machine",
                runtime=RUNTIME,
                architecture=ARCHITECTURE,
                handler=handler,
                code=code,
                role=role,
                environment=environment,
                memory_size=self.settings.function_memory_mb,
                timeout=Duration.minutes(self.settings.function_timeout_minutes),
                tracing=lambda_.Tracing.ACTIVE,
                log_group=log_group,
                vpc=self.vpc,
                vpc_subnets=self.subnets,
                security_groups=[self.security_group],
            )
            NagSuppressions.add_resource_suppressions(
                functions[name],
                [
                    NagPackSuppression(
                        id="AwsSolutions-L1",
                        reason="Python 3.12 is the runtime the contract pins (docs/aws-contract.md) and the "
                        "one the handlers are tested on; moving on is a contract change.",
                    )
                ],
            )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="FunctionLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[g.log_group_arn for g in log_groups],
            )
        )
        return functions

    def _state_machine(self) -> sfn.StateMachine:
        role = iam.Role(
            self,
            "StateMachineRole",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description=f"queue balancer state machine of {self.cluster_name}",
        )
        own_arn = self.format_arn(
            service="states",
            resource="stateMachine",
            resource_name=self.state_machine_name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        statements = [
            iam.PolicyStatement(
                sid="InvokeItsFunctions",
                actions=["lambda:InvokeFunction"],
                resources=[f.function_arn for f in self.functions.values()],
            ),
            iam.PolicyStatement(
                sid="LifecycleItems",
                actions=[
                    "dynamodb:GetItem",
                    "dynamodb:PutItem",
                    "dynamodb:UpdateItem",
                    "dynamodb:DeleteItem",
                ],
                resources=[self.table.table_arn],
            ),
            iam.PolicyStatement(sid="Notify", actions=["sns:Publish"], resources=[self.topic.topic_arn]),
            iam.PolicyStatement(
                sid="NotifyEncrypted",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[self.topic_key.key_arn],
            ),
            iam.PolicyStatement(sid="ContinueAsNew", actions=["states:StartExecution"], resources=[own_arn]),
        ]
        for statement in statements:
            role.add_to_policy(statement)

        log_group = logs.LogGroup(
            self,
            "StateMachineLogs",
            log_group_name=f"/aws/vendedlogs/states/{self.state_machine_name}",
            retention=logs.RetentionDays.THREE_MONTHS,
        )
        substitutions = {f"{name}FunctionArn": f.function_arn for name, f in self.functions.items()}
        substitutions[TABLE_PLACEHOLDER] = self.table.table_name
        substitutions[TOPIC_PLACEHOLDER] = self.topic.topic_arn
        state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=self.state_machine_name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_file(str(self.asl_path)),
            definition_substitutions=substitutions,
            role=role,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
        )
        NagSuppressions.add_resource_suppressions(
            role,
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="Step Functions' log delivery (logs:*LogDelivery, DescribeLogGroups, ...) and "
                    "X-Ray segments support no resource-level permissions; every other statement names "
                    "its function, table, topic, key or the state machine itself.",
                    applies_to=["Resource::*"],
                )
            ],
            apply_to_children=True,
        )
        return state_machine

    def _schedule(self) -> events.Rule:
        return events.Rule(
            self,
            "Schedule",
            description=f"Starts a balancing run of {self.cluster_name} (context scheduleCron)",
            schedule=events.Schedule.expression(self.settings.schedule_expression()),
            enabled=bool(self.settings.schedule_cron),
            targets=[
                targets.SfnStateMachine(
                    self.state_machine, input=events.RuleTargetInput.from_object({"action": "balance"})
                )
            ],
        )

    def _failed_runs_alarm(self) -> cloudwatch.Alarm:
        period = Duration.minutes(5)
        failed = cloudwatch.MathExpression(
            expression="FILL(failed, 0) + FILL(timedOut, 0)",
            using_metrics={
                "failed": self.state_machine.metric_failed(statistic="Sum", period=period),
                "timedOut": self.state_machine.metric_timed_out(statistic="Sum", period=period),
            },
            label="Failed or timed-out runs",
            period=period,
        )
        alarm = failed.create_alarm(
            self,
            "FailedRuns",
            alarm_description=f"A queue balancer run of {self.cluster_name} failed or timed out",
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.topic))
        return alarm

    def _dashboard(self) -> cloudwatch.Dashboard:
        def metric(name: str, statistic: str, label: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace=METRICS_NAMESPACE,
                metric_name=name,
                dimensions_map={"service": SERVICE_NAME},
                statistic=statistic,
                period=Duration.hours(1),
                label=label,
            )

        hour = Duration.hours(1)
        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=self.state_machine_name)
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Moves per hour",
                left=[
                    metric("MovesDone", "Sum", "done"),
                    metric("MovesSkipped", "Sum", "skipped"),
                    metric("MovesFailed", "Sum", "failed"),
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Spread after a run (max - min leaders per node)",
                left=[metric("SpreadAfter", "Maximum", "spread after")],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=1, label="balanced")],
                width=12,
            ),
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Runs",
                left=[
                    self.state_machine.metric_started(statistic="Sum", period=hour, label="started"),
                    self.state_machine.metric_succeeded(statistic="Sum", period=hour, label="succeeded"),
                    self.state_machine.metric_failed(statistic="Sum", period=hour, label="failed"),
                    self.state_machine.metric_timed_out(statistic="Sum", period=hour, label="timed out"),
                    self.state_machine.metric_aborted(statistic="Sum", period=hour, label="stopped"),
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Run duration (s)",
                left=[metric("RunDuration", "Average", "average"), metric("RunDuration", "Maximum", "max")],
                width=8,
            ),
            cloudwatch.AlarmStatusWidget(title="Alarm", alarms=[self.failed_runs_alarm], width=4),
        )
        return dashboard

    def _outputs(self) -> None:
        outputs = (
            ("StateMachineArn", self.state_machine.state_machine_arn, "The balancing workflow"),
            ("LifecycleTableName", self.table.table_name, "Lifecycle state of the cluster's runs"),
            ("NotificationTopicArn", self.topic.topic_arn, "Run reports and failures"),
            ("ScheduleRuleName", self.schedule.rule_name, "EventBridge schedule (context scheduleCron)"),
            ("ClusterName", self.cluster_name, "The balanced cluster"),
            ("DashboardName", self.state_machine_name, "CloudWatch dashboard"),
        )
        for name, value, description in outputs:
            CfnOutput(self, name, value=value, description=description)
        if self.security_group_is_local:  # the ClusterStack outputs its own client group
            CfnOutput(
                self,
                "LambdaSecurityGroupId",
                value=self.security_group.security_group_id,
                description="Security group of the Lambdas: allow it on the cluster's management port",
            )


def _import_secret(scope: Construct, arn: str) -> secretsmanager.ISecret:
    # A complete ARN ends in the 6-character suffix Secrets Manager appends; a partial one does not.
    if re.search(r"-[A-Za-z0-9]{6}$", arn):
        return secretsmanager.Secret.from_secret_complete_arn(scope, "ClusterSecret", arn)
    return secretsmanager.Secret.from_secret_partial_arn(scope, "ClusterSecret", arn)


def substitute(asl_text: str, substitutions: Mapping[str, str]) -> str:
    """The ASL as CloudFormation will deliver it (used by the tests on the synthesized substitutions)."""
    return PLACEHOLDER.sub(lambda m: substitutions.get(m.group(1), m.group(0)), asl_text)
