"""Loopback ports of the infra suites' own RabbitMQ nodes.

The session cluster of tests/conftest.py takes the first slots of each block (5801.., 15801.., 25801..,
epmd 4801) shifted by QUEUE_BALANCER_TEST_PORT_OFFSET (a multiple of 100 per engineer or CI job); the
infra suites take slots 50 and up of the same shifted block, so they never meet that cluster or another run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

OFFSET = int(os.environ.get("QUEUE_BALANCER_TEST_PORT_OFFSET", "0"))


@dataclass(frozen=True)
class NodePorts:
    """The ports of one local node; every node of a suite shares ``epmd``."""

    amqp: int
    management: int
    dist: int
    epmd: int

    def all(self) -> tuple[int, int, int, int]:
        return self.amqp, self.management, self.dist, self.epmd


def node_ports(slot: int) -> NodePorts:
    """Ports of slot ``slot`` (50..99 of the block): the bootstrap test uses 50, the replacement test 60+."""
    if not 50 <= slot <= 99:
        raise ValueError(f"slot {slot}: the infra suites own slots 50..99 of each port block")
    return NodePorts(
        amqp=5801 + OFFSET + slot - 1,
        management=15801 + OFFSET + slot - 1,
        dist=25801 + OFFSET + slot - 1,
        epmd=4801 + OFFSET + slot - 1,
    )
