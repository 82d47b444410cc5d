"""What a BalancerStack is built from, as typed props: the cluster it balances, where its Lambdas run, the
deployment's choices and the workflow sources. ``app.py`` builds them from the cdk.json context."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_secretsmanager as secretsmanager

from queue_balancer.contract import FUNCTION_SECONDS_NEEDED, UNDO_SECONDS
from stacks import REPO_ROOT
from stacks.names import check_cluster_name

if TYPE_CHECKING:
    from stacks.cluster_stack import ClusterStack

DEFAULT_SCHEDULE = "0 3 * * ? *"
LAMBDA_MAX_MINUTES = 15


@dataclass(frozen=True)
class BalancerSettings:
    """What a deployment may choose about the workflow (cdk.json context, see the README, 'Deploy on AWS')."""

    schedule_cron: str | None = None
    notification_email: str | None = None
    function_memory_mb: int = 512
    function_timeout_minutes: int = 5

    def __post_init__(self) -> None:
        shortest = math.ceil(FUNCTION_SECONDS_NEEDED / 60)
        if not shortest <= self.function_timeout_minutes <= LAMBDA_MAX_MINUTES:
            raise ValueError(
                f"function_timeout_minutes {self.function_timeout_minutes}: from {shortest} (Cleanup waits for "
                f"a RunBatch slice of up to {FUNCTION_SECONDS_NEEDED - UNDO_SECONDS:.0f} s, then keeps "
                f"{UNDO_SECONDS:.0f} s to undo the run) to {LAMBDA_MAX_MINUTES} (Lambda's limit)"
            )

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


@dataclass(frozen=True)
class BalancedCluster:
    """The cluster the workflow balances: its management API, admin secret and the tag of its nodes."""

    cluster_name: str
    management_url: str
    secret: secretsmanager.ISecret | str  # a construct, or the ARN of a secret this app did not make
    ssm_tag_key: str
    ssm_tag_value: str

    def __post_init__(self) -> None:
        check_cluster_name(self.cluster_name)


@dataclass(frozen=True)
class FunctionNetwork:
    """Where the Lambdas run: a VPC (construct or id to look up), its subnets and their security group."""

    vpc: ec2.IVpc | None = None
    vpc_id: str | None = None
    subnets: ec2.SubnetSelection | None = None
    subnet_ids: Sequence[str] = ()
    security_group: ec2.ISecurityGroup | None = None
    security_group_id: str | None = None

    def __post_init__(self) -> None:
        if self.vpc is None and not self.vpc_id:
            raise ValueError("the balancer's Lambdas run in the cluster's VPC: give vpc or vpc_id (vpcId)")


@dataclass(frozen=True)
class WorkflowSources:
    """The files the stack packages; the repo's by default, tests and experiments may pass others."""

    asl_path: Path = REPO_ROOT / "statemachine" / "balancer.asl.json"
    lambdas_dir: Path = REPO_ROOT / "lambdas"
    core_dir: Path = REPO_ROOT / "queue_balancer"
    requirements: Sequence[str] | None = None  # None: the project's runtime requirements


@dataclass(frozen=True)
class BalancerProps:
    """Everything a BalancerStack is built from."""

    cluster: BalancedCluster
    network: FunctionNetwork
    settings: BalancerSettings = field(default_factory=BalancerSettings)
    sources: WorkflowSources = field(default_factory=WorkflowSources)

    @classmethod
    def for_cluster_stack(cls, cluster: ClusterStack, settings: BalancerSettings) -> BalancerProps:
        """The balancer of the ClusterStack built by the same app (its values cross as stack references)."""
        return cls(
            cluster=BalancedCluster(
                cluster_name=cluster.cluster_name,
                management_url=cluster.management_url,
                secret=cluster.balancer_secret,
                ssm_tag_key=cluster.ssm_tag_key,
                ssm_tag_value=cluster.ssm_tag_value,
            ),
            network=FunctionNetwork(
                vpc=cluster.vpc, subnets=cluster.node_subnets, security_group=cluster.client_security_group
            ),
            settings=settings,
        )

    @classmethod
    def for_existing_cluster(cls, cluster: ExistingCluster, settings: BalancerSettings) -> BalancerProps:
        """The balancer of a cluster this app did not build (management URL + secret ARN + VPC)."""
        return cls(
            cluster=BalancedCluster(
                cluster_name=cluster.cluster_name,
                management_url=cluster.management_url,
                secret=cluster.secret_arn,
                ssm_tag_key=cluster.ssm_tag_key,
                ssm_tag_value=cluster.ssm_tag_value or cluster.cluster_name,
            ),
            network=FunctionNetwork(
                vpc_id=cluster.vpc_id,
                subnet_ids=cluster.subnet_ids,
                security_group_id=cluster.security_group_id,
            ),
            settings=settings,
        )
