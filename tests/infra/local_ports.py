"""Loopback ports of the infra suites' own RabbitMQ nodes.

The session cluster of tests/conftest.py takes the first slots of each block (5801.., 15801.., 25801..,
epmd 4801) shifted by ``PORT_OFFSET`` (QUEUE_BALANCER_TEST_PORT_OFFSET, a multiple of 100 per engineer or
CI job, plus the xdist worker's block); the infra suites take slots 85..99 of the same shifted block (the
integration suites use 50..84), so they never meet another suite's nodes, another worker or another run.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.conftest import PORT_OFFSET


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
    """Ports of slot ``slot`` (85..99 of the block): the bootstrap test uses 85, the replacement test 88+."""
    if not 85 <= slot <= 99:
        raise ValueError(f"slot {slot}: the infra suites own slots 85..99 of each port block")
    return NodePorts(
        amqp=5801 + PORT_OFFSET + slot - 1,
        management=15801 + PORT_OFFSET + slot - 1,
        dist=25801 + PORT_OFFSET + slot - 1,
        epmd=4801 + PORT_OFFSET + slot - 1,
    )
