"""The balancer's roles: one per Lambda function (what ``contract.FUNCTION_ACCESS`` grants it) and the state
machine's, each scoped to named resources."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from cdk_nag import NagPackSuppression, NagSuppressions

from queue_balancer.contract import CLUSTER_ACCESS, EVAL_ACCESS, NOTIFY_ACCESS, TABLE_ACCESS, function_access
from stacks.balancer_props import BalancedCluster


def function_role(
    stack: Stack,
    name: str,
    *,
    cluster: BalancedCluster,
    secret: secretsmanager.ISecret,
    table: dynamodb.ITable,
    topic: sns.ITopic,
    topic_key: kms.IKey,
    eval_document_name: str,
    log_group: logs.ILogGroup,
) -> iam.Role:
    """One function's own role: its log group and the VPC always; the admin secret, the lifecycle items,
    the notification topic and the balancer's own command document on the cluster's nodes only as
    ``contract.FUNCTION_ACCESS`` says (never ``AWS-RunShellScript``: that would be any shell line as root
    on every broker)."""
    access = function_access(name)
    role = iam.Role(
        stack,
        f"{name}Role",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=f"queue balancer {name} function of {cluster.cluster_name} (docs/aws-contract.md)",
    )
    statements = [
        iam.PolicyStatement(
            sid="FunctionLogs",
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[log_group.log_group_arn],
        ),
        iam.PolicyStatement(
            sid="VpcNetworkInterfaces",
            actions=[
                "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
            ],
            resources=["*"],
        ),
    ]  # fmt: skip
    if TABLE_ACCESS in access:
        statements.append(
            iam.PolicyStatement(
                sid="LifecycleItems",
                actions=[
                    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                    "dynamodb:Query", "dynamodb:BatchWriteItem",
                ],
                resources=[table.table_arn],
            )
        )  # fmt: skip
    if CLUSTER_ACCESS in access:
        secret.grant_read(role)
    if NOTIFY_ACCESS in access:
        statements += [
            iam.PolicyStatement(
                sid="NotificationTopic", actions=["sns:Publish"], resources=[topic.topic_arn]
            ),
            iam.PolicyStatement(
                sid="NotificationTopicKey",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[topic_key.key_arn],
            ),
        ]
    if EVAL_ACCESS in access:
        statements += [
            iam.PolicyStatement(
                sid="EvalDocumentOnly",
                actions=["ssm:SendCommand"],
                resources=[
                    stack.format_arn(service="ssm", resource="document", resource_name=eval_document_name)
                ],
            ),
            iam.PolicyStatement(
                sid="EvalDocumentOnClusterNodes",
                actions=["ssm:SendCommand"],
                resources=[stack.format_arn(service="ec2", resource="instance", resource_name="*")],
                conditions={
                    "StringEquals": {f"ssm:resourceTag/{cluster.ssm_tag_key}": cluster.ssm_tag_value}
                },
            ),
            iam.PolicyStatement(
                sid="CommandResultsAndNodeLookup",
                # lambdas/ssm_eval.py finds a running node by its tag with ec2:DescribeInstances.
                actions=["ssm:GetCommandInvocation", "ec2:DescribeInstances"],
                resources=["*"],
            ),
        ]
    for statement in statements:
        role.add_to_policy(statement)
    NagSuppressions.add_resource_suppressions(
        role,
        [
            NagPackSuppression(
                id="AwsSolutions-IAM5",
                reason="Only actions without resource-level permissions use '*': the VPC network "
                "interfaces Lambda manages, X-Ray segments and, for the functions that move or plan queues, "
                "ssm:GetCommandInvocation and ec2:DescribeInstances (finding a running node by its tag); "
                "its ssm:SendCommand on instance/* is limited by the condition on the cluster nodes' tag "
                "(instances are replaced by the Auto Scaling group, their IDs are not known at deploy time).",
                applies_to=[
                    "Resource::*",
                    {"regex": "/^Resource::arn:<AWS::Partition>:ec2:.*:instance/\\*$/"},
                ],
            )
        ],
        apply_to_children=True,
    )
    return role


def state_machine_role(
    stack: Stack,
    *,
    cluster_name: str,
    state_machine_name: str,
    functions: Sequence[lambda_.IFunction],
    table: dynamodb.ITable,
    topic: sns.ITopic,
    topic_key: kms.IKey,
) -> iam.Role:
    """The state machine's role: its functions, the lifecycle items, the topic, and its own continuation."""
    role = iam.Role(
        stack,
        "StateMachineRole",
        assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
        description=f"queue balancer state machine of {cluster_name}",
    )
    own_arn = stack.format_arn(
        service="states",
        resource="stateMachine",
        resource_name=state_machine_name,
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )
    statements = [
        iam.PolicyStatement(
            sid="InvokeItsFunctions",
            actions=["lambda:InvokeFunction"],
            resources=[f.function_arn for f in functions],
        ),
        iam.PolicyStatement(
            sid="LifecycleItems",
            actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
            resources=[table.table_arn],
        ),
        iam.PolicyStatement(sid="Notify", actions=["sns:Publish"], resources=[topic.topic_arn]),
        iam.PolicyStatement(
            sid="NotifyEncrypted",
            actions=["kms:Decrypt", "kms:GenerateDataKey"],
            resources=[topic_key.key_arn],
        ),
        iam.PolicyStatement(sid="ContinueAsNew", actions=["states:StartExecution"], resources=[own_arn]),
    ]
    for statement in statements:
        role.add_to_policy(statement)
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
    return role
