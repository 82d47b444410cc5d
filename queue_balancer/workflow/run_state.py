"""The run's part of the execution payload (``$.run``): small, bounded, plain JSON.

The plan itself never travels in the payload (it is stored per batch in DynamoDB); the payload carries
only where the run stands: which plan generation and batch comes next, the counts so far, how many
history events this execution has spent, and the route the next Choice state takes (``next``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from queue_balancer.contract import PARTITION_KEY, cluster_pk
from queue_balancer.lifecycle import Counts
from queue_balancer.lifecycle.routing import Route
from queue_balancer.model import JsonDict

__all__ = ["Route", "RunState"]


@dataclass(frozen=True)
class RunState:
    run_id: str
    cluster: str
    started_at: float
    continuation: bool = False
    execution_seq: int = 0
    generation: int = 0
    round: int = 0
    batch: int = 0
    batches: int = 0
    plan_moves: int = 0
    attempted: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    round_spread: int = 0
    events: int = 0
    next: str = ""
    outcome: str = ""
    current: JsonDict = field(default_factory=dict)
    """The batch under way (``generation``, ``index``) until RunBatch completes it; empty between batches."""
    wait: int = 0
    """Seconds the state machine waits before the next slice of the batch (long syncs)."""
    lock: dict[str, str] = field(default_factory=dict)
    continuation_name: str = ""
    awaiting_go: bool = False
    """A plan was loaded with ``load`` (or re-planned by it): the run waits in READY for ``go``."""

    @property
    def pk(self) -> str:
        return cluster_pk(self.cluster)

    @property
    def counts(self) -> Counts:
        return Counts(
            pending=max(self.plan_moves - self.attempted, 0),
            done=self.done,
            failed=self.failed,
            skipped=self.skipped,
        )

    def spend(self, events: int) -> RunState:
        return replace(self, events=self.events + events)

    def to_dict(self) -> JsonDict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data[PARTITION_KEY] = self.pk  # for the ASL's direct DynamoDB tasks (lock key)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunState:
        """Read ``$.run``; transient keys the ASL adds (``answer``, ``finished``, ``pk``) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
