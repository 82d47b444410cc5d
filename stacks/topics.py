"""An SNS topic encrypted with its own KMS key that CloudWatch alarms may publish to (both stacks use one)."""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct


def encrypted_topic(
    scope: Construct, name: str, *, purpose: str, email: str | None = None
) -> tuple[kms.Key, sns.Topic]:
    """Topic ``name`` and key ``<name>Key``; alarms of this account may use the key, e-mail subscribed if given."""
    key = kms.Key(
        scope, f"{name}Key", description=f"Encrypts the SNS topic for {purpose}", enable_key_rotation=True
    )
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="CloudWatchAlarmsPublish",
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
        )
    )
    topic = sns.Topic(scope, name, display_name=purpose[:100], master_key=key, enforce_ssl=True)
    if email:
        topic.add_subscription(subscriptions.EmailSubscription(email))
    return key, topic
