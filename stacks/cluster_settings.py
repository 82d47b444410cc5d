"""What a deployment may choose about its cluster, checked so that no choice can synthesize a stack that
cannot boot (docs/deploy.md, "Context keys")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aws_cdk import aws_ec2 as ec2

from stacks.names import check_cluster_name

# Team RabbitMQ's Erlang RPMs (the nodes' package source) are built for x86-64 with every release and for
# aarch64 only now and then (github.com/rabbitmq/erlang-rpm), so a Graviton node may find no package.
SUPPORTED_ARCHITECTURE = ec2.InstanceArchitecture.X86_64
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_ZONE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")


@dataclass(frozen=True)
class ClusterSettings:
    """The cluster's settings (cdk.json context, see docs/deploy.md)."""

    cluster_name: str = "rabbitmq"
    node_count: int = 3
    queue_type: str = "quorum"
    instance_type: str = "m6i.large"
    rabbitmq_version: str = "4.1.7"
    erlang_version: str = "27.3"
    data_volume_gib: int = 50
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    vpc_cidr: str = "10.0.0.0/16"
    availability_zones: tuple[str, ...] = ()
    nat_gateways: int = 1
    vpc_endpoints: bool = False
    ssm_tag_key: str = "queue-balancer-cluster"
    ssm_tag_value: str | None = None
    notification_email: str | None = None
    ami_id: str | None = None

    def __post_init__(self) -> None:
        check_cluster_name(self.cluster_name)
        if self.queue_type not in ("classic", "quorum"):
            raise ValueError(f"queueType must be 'classic' or 'quorum', not {self.queue_type!r}")
        if self.node_count < 3 or self.node_count % 2 == 0 or self.node_count > 9:
            raise ValueError(
                f"nodeCount must be odd, from 3 to 9, not {self.node_count}: with pause_minority and "
                "quorum queues a cluster works while a majority runs, so 1 node survives no loss, and an "
                "even count survives no more losses than the odd count below it while a partition into "
                "halves pauses every node"
            )
        major = self.rabbitmq_major
        if self.queue_type == "classic" and major >= 4:
            raise ValueError(
                f"queueType classic (mirrored classic queues) needs RabbitMQ 3.13: {self.rabbitmq_version} "
                "removed classic mirroring. Use queueType quorum, or rabbitmqVersion 3.13.7 with "
                "erlangVersion 26.2"
            )
        if ec2.InstanceType(self.instance_type).architecture != SUPPORTED_ARCHITECTURE:
            raise ValueError(
                f"instanceType {self.instance_type} is not x86-64: Team RabbitMQ's Erlang packages, which "
                "the nodes install, are published for x86-64 with every release only (m6i, m7i, c6i, ...)"
            )
        if self.nat_gateways < 1 and self.vpc_id is None:
            raise ValueError(
                "natGateways must be at least 1: the nodes install Erlang and RabbitMQ from Team "
                "RabbitMQ's package repositories at boot, which no VPC endpoint reaches "
                "(vpcEndpoints=true keeps the AWS API calls off the NAT gateway)"
            )
        if self.vpc_id is None and self.availability_zones:
            if len(self.availability_zones) < 3:
                raise ValueError("availabilityZones: give three (one node per zone keeps a majority)")
            bad = [z for z in self.availability_zones if not _ZONE.match(z)]
            if bad:
                raise ValueError(f"availabilityZones: {bad} are not zone names such as eu-west-1a")

    @property
    def rabbitmq_major(self) -> int:
        match = _VERSION.match(self.rabbitmq_version)
        if not match:
            raise ValueError(f"rabbitmqVersion {self.rabbitmq_version!r}: give major.minor.patch, e.g. 4.1.7")
        return int(match.group(1))

    @property
    def tag_value(self) -> str:
        """The value of the SSM tag: the cluster's name unless chosen."""
        return self.ssm_tag_value or self.cluster_name

    def check_zones_in(self, region: str) -> None:
        """Named zones must belong to the stack's region (an unresolved region is checked by CloudFormation)."""
        wrong = [z for z in self.availability_zones if not z.startswith(region)]
        if wrong:
            raise ValueError(f"availabilityZones {wrong} are not zones of the region {region}")
