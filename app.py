#!/usr/bin/env python3
"""CDK entry: builds ClusterStack and BalancerStack from the cdk.json context.

Synthesizes offline, without AWS credentials and without Docker: ``python app.py`` (or ``npx cdk synth``).
Every context key, its default and its meaning are listed in docs/deploy.md. With ``managementUrl`` set the
balancer targets that existing cluster and no ClusterStack is built.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.balancer_props import BalancerProps, BalancerSettings, ExistingCluster
from stacks.balancer_stack import BalancerStack
from stacks.cluster_settings import ClusterSettings
from stacks.cluster_stack import ClusterStack

HERE = Path(__file__).resolve().parent

# Feature flags, the same whether the CLI or `python app.py` synthesizes (cdk.json repeats them).
FEATURE_FLAGS = {
    # Plain CloudFormation exports between the two stacks: the cluster cannot be deleted under the balancer.
    "@aws-cdk/core:defaultCrossStackReferences": "strong",
}

# Used only when neither the context nor the CLI's environment names them (offline synth, tests).
PLACEHOLDER_ACCOUNT = "123456789012"
PLACEHOLDER_REGION = "eu-west-1"


class Context:
    """Typed access to the app's context; values given with ``-c key=value`` arrive as strings."""

    def __init__(self, app: cdk.App) -> None:
        self._node = app.node

    def raw(self, key: str) -> Any:
        value = self._node.try_get_context(key)
        return None if value == "" else value

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.raw(key)
        return default if value is None else str(value)

    def integer(self, key: str, default: int) -> int:
        value = self.raw(key)
        try:
            return default if value is None else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"context {key}: expected an integer, got {value!r}") from None

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(f"context {key}: expected true or false, got {value!r}")

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        return tuple(str(item).strip() for item in value if str(item).strip())


def cluster_settings(ctx: Context) -> ClusterSettings:
    """ClusterStack's settings from the context (defaults in ClusterSettings and docs/deploy.md).

    Without availabilityZones the stack looks the account's zones up (never assumed letters).
    """
    defaults = ClusterSettings()
    vpc_id = ctx.text("vpcId")
    zones = ctx.strings("availabilityZones")
    return ClusterSettings(
        cluster_name=ctx.text("clusterName", defaults.cluster_name) or defaults.cluster_name,
        node_count=ctx.integer("nodeCount", defaults.node_count),
        queue_type=ctx.text("queueType", defaults.queue_type) or defaults.queue_type,
        instance_type=ctx.text("instanceType", defaults.instance_type) or defaults.instance_type,
        rabbitmq_version=ctx.text("rabbitmqVersion", defaults.rabbitmq_version) or defaults.rabbitmq_version,
        erlang_version=ctx.text("erlangVersion", defaults.erlang_version) or defaults.erlang_version,
        data_volume_gib=ctx.integer("dataVolumeSize", defaults.data_volume_gib),
        vpc_id=vpc_id,
        subnet_ids=ctx.strings("subnetIds"),
        vpc_cidr=ctx.text("vpcCidr", defaults.vpc_cidr) or defaults.vpc_cidr,
        availability_zones=zones,
        nat_gateways=ctx.integer("natGateways", defaults.nat_gateways),
        vpc_endpoints=ctx.flag("vpcEndpoints", defaults.vpc_endpoints),
        ssm_tag_key=ctx.text("ssmTagKey", defaults.ssm_tag_key) or defaults.ssm_tag_key,
        ssm_tag_value=ctx.text("ssmTagValue"),
        notification_email=ctx.text("notificationEmail"),
        ami_id=ctx.text("amiId"),
    )


def balancer_settings(ctx: Context) -> BalancerSettings:
    """BalancerStack's own settings from the context."""
    return BalancerSettings(
        schedule_cron=ctx.text("scheduleCron"),
        notification_email=ctx.text("notificationEmail"),
    )


def existing_cluster(ctx: Context) -> ExistingCluster | None:
    """The cluster named by the context (``managementUrl`` + ``secretArn`` ...), if any."""
    url = ctx.text("managementUrl")
    if not url:
        return None
    missing = [key for key in ("secretArn", "vpcId") if not ctx.text(key)]
    if missing:
        raise ValueError(f"managementUrl is set, so the context also needs: {', '.join(missing)}")
    name = ctx.text("clusterName", "rabbitmq") or "rabbitmq"
    return ExistingCluster(
        cluster_name=name,
        management_url=url,
        secret_arn=str(ctx.text("secretArn")),
        vpc_id=str(ctx.text("vpcId")),
        subnet_ids=ctx.strings("subnetIds"),
        security_group_id=ctx.text("lambdaSecurityGroupId"),
        ssm_tag_key=ctx.text("ssmTagKey", "queue-balancer-cluster") or "queue-balancer-cluster",
        ssm_tag_value=ctx.text("ssmTagValue", name) or name,
    )


def build_app(context: Mapping[str, Any] | None = None, outdir: str | None = None) -> cdk.App:
    """The app with its stacks and the cdk-nag AwsSolutions checks (findings are synth errors)."""
    app = cdk.App(context={**FEATURE_FLAGS, **(context or {})}, outdir=outdir)
    ctx = Context(app)
    account = ctx.text("account") or os.environ.get("CDK_DEFAULT_ACCOUNT") or PLACEHOLDER_ACCOUNT
    region = ctx.text("region") or os.environ.get("CDK_DEFAULT_REGION") or PLACEHOLDER_REGION
    env = cdk.Environment(account=account, region=region)

    existing = existing_cluster(ctx)
    balancer_name = ctx.text("balancerStackName", "QueueBalancer") or "QueueBalancer"
    if existing is None:
        cluster = ClusterStack(
            app,
            ctx.text("clusterStackName", "RabbitMqCluster") or "RabbitMqCluster",
            settings=cluster_settings(ctx),
            env=env,
            description="rabbitmq-queue-balancer: an HA RabbitMQ cluster on EC2 behind an internal NLB",
        )
        # The cluster's values cross as stack references, which also order the deployment.
        props = BalancerProps.for_cluster_stack(cluster, balancer_settings(ctx))
    else:
        props = BalancerProps.for_existing_cluster(existing, balancer_settings(ctx))
    BalancerStack(app, balancer_name, props=props, env=env)

    cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app


def _cli_context() -> dict[str, Any]:
    """cdk.json's context when run as ``python app.py``; the CDK CLI passes it (and more) itself."""
    if "CDK_CONTEXT_JSON" in os.environ or "CONTEXT_OVERFLOW_LOCATION" in os.environ:
        return {}
    merged: dict[str, Any] = {}
    for name in ("cdk.json", "cdk.context.json"):
        path = HERE / name
        if path.exists():
            document = json.loads(path.read_text())
            merged.update(document.get("context", {}) if name == "cdk.json" else document)
    return merged


if __name__ == "__main__":
    build_app(_cli_context()).synth()
