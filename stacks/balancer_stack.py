"""BalancerStack: the balancing workflow on AWS, against the ClusterStack or any existing cluster.

The state machine comes from ``statemachine/balancer.asl.json``; its ``${<Name>FunctionArn}`` placeholders
name the Lambda functions (the contract: ``queue_balancer.contract``), all sharing one code asset
(``stacks.lambda_asset``). See docs/aws-contract.md. What it is built from is one typed ``BalancerProps``
(``stacks.balancer_props``).
"""

from __future__ import annotations

import re
from typing import Any

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from aws_cdk import aws_stepfunctions as sfn
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from queue_balancer import eval_document
from queue_balancer.contract import (
    ENDED_WITHOUT_CLEANUP,
    EXPIRES_AT,
    PARTITION_KEY,
    SORT_KEY,
    STATUS_CHANGE,
    TABLE_PLACEHOLDER,
    TOPIC_PLACEHOLDER,
    ContractError,
    FunctionEnvironment,
    discover_functions,
    function_placeholder,
)
from stacks.balancer_iam import function_role, state_machine_role
from stacks.balancer_monitoring import balancer_dashboard, cleanup_failures_alarm, failed_runs_alarm
from stacks.balancer_props import BalancerProps
from stacks.lambda_asset import ARCHITECTURE, RUNTIME, lambda_code, runtime_requirements
from stacks.network import subnets_by_id
from stacks.topics import encrypted_topic


class BalancerStack(Stack):
    """Lambdas from the ASL, the state machine, lifecycle table, topic, schedule, dashboard and alarm."""

    def __init__(self, scope: Construct, construct_id: str, *, props: BalancerProps, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.props = props
        self.settings = props.settings
        self.cluster_name = props.cluster.cluster_name
        sources = props.sources
        if not sources.asl_path.is_file():
            raise ContractError(f"the state machine definition {sources.asl_path} does not exist")
        self.asl_path = sources.asl_path
        self.handlers = discover_functions(sources.asl_path.read_text(), sources.lambdas_dir)

        self.vpc, self.subnets, self.security_group = self._network()
        secret = props.cluster.secret
        self.secret = _import_secret(self, secret) if isinstance(secret, str) else secret

        self.table = self._lifecycle_table()
        self.topic_key, self.topic = encrypted_topic(
            self,
            "NotificationTopic",
            purpose=f"queue balancer runs of {self.cluster_name}",
            email=self.settings.notification_email,
        )
        self.state_machine_name = f"queue-balancer-{self.cluster_name}"
        requirements = sources.requirements
        self.functions = self._functions(
            lambda_code(
                sources.lambdas_dir,
                sources.core_dir,
                runtime_requirements() if requirements is None else requirements,
            )
        )
        self.state_machine = self._state_machine()
        self.schedule = self._schedule()
        self.ended_runs = self._ended_runs()
        self.failed_runs_alarm = failed_runs_alarm(self, self.state_machine, self.topic, self.cluster_name)
        self.cleanup_failures_alarm = cleanup_failures_alarm(
            self, self.functions["Cleanup"], self.topic, self.cluster_name
        )
        self.dashboard = balancer_dashboard(
            self, self.state_machine_name, self.state_machine, self.failed_runs_alarm
        )
        self._outputs()

    # --- resources ------------------------------------------------------------------------------------

    def _network(self) -> tuple[ec2.IVpc, ec2.SubnetSelection, ec2.ISecurityGroup]:
        network = self.props.network
        vpc = network.vpc or ec2.Vpc.from_lookup(self, "ClusterVpc", vpc_id=str(network.vpc_id))
        subnets = network.subnets
        if subnets is None:
            subnets = (
                subnets_by_id(self, network.subnet_ids)
                if network.subnet_ids
                else ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
            )
        # The ClusterStack outputs its own client group; any other group is worth an output of this stack.
        self.security_group_is_local = network.security_group is None
        group: ec2.ISecurityGroup
        if network.security_group is not None:
            group = network.security_group
        elif network.security_group_id:
            group = ec2.SecurityGroup.from_security_group_id(
                self, "LambdaSecurityGroup", network.security_group_id
            )
        else:
            group = ec2.SecurityGroup(
                self,
                "LambdaSecurityGroup",
                vpc=vpc,
                description="queue balancer Lambdas: allow this group on the cluster 15672 (management API)",
                allow_all_outbound=True,
            )
        return vpc, subnets, group

    def _lifecycle_table(self) -> dynamodb.Table:
        return dynamodb.Table(
            self,
            "LifecycleTable",
            partition_key=dynamodb.Attribute(name=PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=EXPIRES_AT,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _eval_document(self) -> ssm.CfnDocument:
        """The only command the Lambdas may send to a node (``queue_balancer.eval_document``)."""
        return ssm.CfnDocument(
            self,
            "EvalDocument",
            name=eval_document.document_name(self.cluster_name),
            document_type="Command",
            document_format="JSON",
            content=eval_document.content(),
            update_method="NewVersion",
        )

    def _environment(self) -> dict[str, str]:
        cluster = self.props.cluster
        return FunctionEnvironment(
            cluster_name=self.cluster_name,
            management_url=cluster.management_url,
            secret_arn=self.secret.secret_arn,
            ssm_tag_key=cluster.ssm_tag_key,
            ssm_tag_value=cluster.ssm_tag_value,
            lifecycle_table=self.table.table_name,
            notification_topic_arn=self.topic.topic_arn,
        ).to_env()

    def _functions(self, code: lambda_.Code) -> dict[str, lambda_.Function]:
        document = self._eval_document()
        environment = self._environment()
        functions = {}
        for name, handler in self.handlers.items():
            log_group = logs.LogGroup(self, f"{name}Logs", retention=logs.RetentionDays.THREE_MONTHS)
            role = function_role(
                self,
                name,
                cluster=self.props.cluster,
                secret=self.secret,
                table=self.table,
                topic=self.topic,
                topic_key=self.topic_key,
                eval_document_name=document.ref,
                log_group=log_group,
            )
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
        return functions

    def _state_machine(self) -> sfn.StateMachine:
        role = state_machine_role(
            self,
            cluster_name=self.cluster_name,
            state_machine_name=self.state_machine_name,
            functions=list(self.functions.values()),
            table=self.table,
            topic=self.topic,
            topic_key=self.topic_key,
        )
        log_group = logs.LogGroup(
            self,
            "StateMachineLogs",
            log_group_name=f"/aws/vendedlogs/states/{self.state_machine_name}",
            retention=logs.RetentionDays.THREE_MONTHS,
        )
        substitutions = {function_placeholder(name): f.function_arn for name, f in self.functions.items()}
        substitutions[TABLE_PLACEHOLDER] = self.table.table_name
        substitutions[TOPIC_PLACEHOLDER] = self.topic.topic_arn
        return sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=self.state_machine_name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_file(str(self.asl_path)),
            definition_substitutions=substitutions,
            role=role,
            # Without execution data: inputs and outputs carry task tokens (READY/PAUSE), which must not
            # land in a log; the events, states and errors are still logged.
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
            tracing_enabled=True,
        )

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

    def _ended_runs(self) -> events.Rule:
        """An execution stopped (StopExecution, the console), timed out (the ASL's TimeoutSeconds) or failed
        on a path without cleanup leaves its locks and temporary policies: Cleanup undoes them
        (``queue_balancer.workflow.ended``), as it does for a caught failure. EventBridge's retries cover
        delivery only: a Cleanup that Lambda accepted and that fails its own two retries (the management API
        down, say) goes to the notification topic (on-failure destination) with the event and the error,
        instead of being dropped with the run's locks and policies left behind."""
        # L1: SnsDestination would grant kms:GenerateDataKey* on its own; the role has what
        # contract.FUNCTION_ACCESS names (NOTIFY_ACCESS), without a wildcard.
        lambda_.CfnEventInvokeConfig(
            self,
            "CleanupOnFailure",
            function_name=self.functions["Cleanup"].function_name,
            qualifier="$LATEST",
            maximum_retry_attempts=2,
            maximum_event_age_in_seconds=int(Duration.hours(6).to_seconds()),
            destination_config=lambda_.CfnEventInvokeConfig.DestinationConfigProperty(
                on_failure=lambda_.CfnEventInvokeConfig.OnFailureProperty(destination=self.topic.topic_arn)
            ),
        )
        return events.Rule(
            self,
            "EndedRuns",
            description=f"Runs of {self.cluster_name} that ended without cleaning up: Cleanup releases their "
            "locks and removes their temporary policies",
            event_pattern=events.EventPattern(
                source=["aws.states"],
                detail_type=[STATUS_CHANGE],
                detail={
                    "stateMachineArn": [self.state_machine.state_machine_arn],
                    "status": list(ENDED_WITHOUT_CLEANUP),
                },
            ),
            targets=[
                targets.LambdaFunction(
                    self.functions["Cleanup"], retry_attempts=8, max_event_age=Duration.hours(2)
                )
            ],
        )

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
        if self.security_group_is_local:
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
