"""Network pieces both stacks use."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_ec2 as ec2
from constructs import Construct


def subnets_by_id(scope: Construct, subnet_ids: Sequence[str]) -> ec2.SubnetSelection:
    """Exactly these subnets, known without a VPC lookup (so an offline synth places them right)."""
    return ec2.SubnetSelection(
        subnets=[ec2.Subnet.from_subnet_id(scope, f"Subnet{i}", sid) for i, sid in enumerate(subnet_ids)]
    )
