"""The workloads both tools get, seeded identically and from scratch for every single run.

Why these six: (a) is the seed plugin's own example; (b) makes mirror synchronisation cost something
(60,000 persistent messages); (c) is the quorum path, where neither tool copies messages; (d) mixes both
kinds in one plan; (e) adds "fixed load" - unmirrored classic queues, some holding messages (which nobody
may move without losing them) and some empty (which the balancer may move, the built-in never does) - so
the best reachable distribution depends on which queues are movable at all; (f) spreads the queues over
three vhosts (each with its own HA policy, and the temporary policies land in each vhost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from queue_balancer.local.cluster import LocalCluster
from queue_balancer.local.seed import QueueType, seed, seed_unmirrored

Progress = Callable[[str], None]
# How the project's targets apply: "mirrored" workloads must be 3x faster than the built-in, "quorum"
# ones at most 2x slower; a mixed workload is judged against the weaker (quorum) bound.
Kind = Literal["mirrored", "quorum", "mixed"]


@dataclass(frozen=True)
class Workload:
    """One workload: seeded queues (all leaders on node 1), optionally plus unmirrored fixed load."""

    key: str
    title: str
    kind: Kind
    queues: int
    messages: int
    queue_type: QueueType = "classic"
    unmirrored: int = 0
    unmirrored_with_messages: int = 0
    unmirrored_messages: int = 0
    vhosts: tuple[str, ...] = ("/",)
    """The queues are split evenly over these vhosts (``queues`` in all)."""

    @property
    def expected_messages(self) -> int:
        """Messages the seed publishes (with confirms), so "before" can be checked, not assumed."""
        return self.queues * self.messages + self.unmirrored_with_messages * self.unmirrored_messages

    @property
    def total_queues(self) -> int:
        return self.queues + self.unmirrored

    @property
    def label(self) -> str:
        return f"({self.key}) {self.title}"

    def seed(self, cluster: LocalCluster, progress: Progress) -> None:
        """Create the workload on an empty cluster; every leader ends up on node 1, mirrors in sync."""
        share, extra = divmod(self.queues, len(self.vhosts))
        for index, vhost in enumerate(self.vhosts):
            seed(
                cluster,
                queues=share + (1 if index < extra else 0),
                messages=self.messages,
                queue_type=self.queue_type,
                vhost=vhost,
                prefix="seed",
                on_node=1,
                progress=progress,
            )
        if self.unmirrored:
            seed_unmirrored(
                cluster,
                queues=self.unmirrored,
                with_messages=self.unmirrored_with_messages,
                messages=self.unmirrored_messages,
                prefix="fixed",
                on_node=1,
                progress=progress,
            )


WORKLOADS: tuple[Workload, ...] = (
    Workload("a", "21 mirrored x 100 msgs (the seed's example)", "mirrored", 21, 100),
    Workload("b", "60 mirrored x 1,000 msgs", "mirrored", 60, 1000),
    Workload("c", "30 quorum x 100 msgs", "quorum", 30, 100, "quorum"),
    Workload("d", "15 mirrored + 15 quorum x 100 msgs", "mixed", 30, 100, "mixed"),
    Workload(
        "e",
        "12 mirrored x 100 msgs + 6 unmirrored x 100 msgs + 6 empty unmirrored",
        "mirrored",
        12,
        100,
        unmirrored=12,
        unmirrored_with_messages=6,
        unmirrored_messages=100,
    ),
    Workload(
        "f",
        "3 vhosts x 10 mirrored x 100 msgs",
        "mirrored",
        30,
        100,
        vhosts=("/", "orders", "billing/eu"),
    ),
    Workload(
        "g",
        "30 quorum x 100 msgs + 3 classic x 100 msgs (issue 10's, for RabbitMQ 4: classic stays)",
        "quorum",
        30,
        100,
        "quorum",
        unmirrored=3,
        unmirrored_with_messages=3,
        unmirrored_messages=100,
    ),
)


def select(keys: Sequence[str]) -> list[Workload]:
    """The workloads named by ``--workloads a,b,...`` in the order given; unknown keys are an error."""
    by_key = {w.key: w for w in WORKLOADS}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(by_key)}")
    return [by_key[k] for k in dict.fromkeys(keys)]
