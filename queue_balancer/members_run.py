"""A members run's before/after (``balance --members`` and the workflow's ``members: true``), and its rounds.

One summary for the CLI and the workflow's report: quorum members per node before and after, the member
changes made, the changes that failed and why, and what a fresh plan would still change.
"""

from __future__ import annotations

from dataclasses import dataclass

from queue_balancer.member_moves import MemberPhase, MemberProgress
from queue_balancer.members import MembersPlan
from queue_balancer.model import Distribution, JsonDict


def another_members_round(replanned: MembersPlan, finished_rounds: int, rounds: int) -> bool:
    """After a round, re-read and re-plan: go on while rounds are left and the plan still changes
    something (changes that failed or timed out, queues that had no quorum online before)."""
    return finished_rounds < rounds and bool(replanned.moves)


@dataclass(frozen=True)
class MembersSummary:
    """Members per node when the run planned and after it, with what happened to every change."""

    planned: Distribution
    """The run's first plan: members per node before and the planned after, over its eligible nodes."""
    after: MembersPlan
    """A fresh plan after the run: its ``before`` is the distribution now, its moves what is left."""
    changes: tuple[MemberProgress, ...]
    seconds: float

    @property
    def failed(self) -> tuple[MemberProgress, ...]:
        return tuple(p for p in self.changes if p.phase is MemberPhase.FAILED)

    @property
    def member_changes(self) -> int:
        return sum(len(p.added) + len(p.removed) for p in self.changes)

    @property
    def spread_before(self) -> int:
        return self.planned.spread_before

    @property
    def spread_after(self) -> int:
        return self.after.spread_before

    def to_dict(self, limit: int | None = None) -> JsonDict:
        """The figures; at most ``limit`` failed changes listed (a stored item has a size limit)."""
        failed = self.failed if limit is None else self.failed[:limit]
        return {
            "kind": "members",
            "before": dict(self.planned.before),
            "planned": dict(self.planned.after),
            "after": dict(self.after.before),
            "spread_before": self.spread_before,
            "spread_after": self.spread_after,
            "changes": self.member_changes,
            "queues": len(self.changes),
            "failed": [{"vhost": p.move.vhost, "queue": p.move.queue, "reason": p.outcome} for p in failed],
            "failed_count": len(self.failed),
            "remaining_changes": self.after.changes,
            "seconds": round(self.seconds, 2),
        }

    def text(self) -> str:
        """Before/after table for a terminal."""
        lines = ["members per node".ljust(28) + "before  after"]
        for node in self._nodes():
            lines.append(
                f"{node:<28}{self.planned.before.get(node, 0):>6}  {self.after.before.get(node, 0):>5}"
            )
        lines.append(
            f"{self.member_changes} member changes in {len(self.changes)} queues, {len(self.failed)} failed, "
            f"{self.seconds:.1f} s; spread {self.spread_before} -> {self.spread_after}"
        )
        lines += [f"  failed: '{p.move.queue}' in vhost '{p.move.vhost}': {p.outcome}" for p in self.failed]
        return "\n".join(lines)

    def markdown(self) -> str:
        """Before/after for the SNS notification."""
        lines = ["| node | members before | members after |", "|---|---:|---:|"]
        lines += [
            f"| {n} | {self.planned.before.get(n, 0)} | {self.after.before.get(n, 0)} |"
            for n in self._nodes()
        ]
        lines += [
            "",
            f"members spread {self.spread_before} -> {self.spread_after}; {self.member_changes} member "
            f"changes in {len(self.changes)} queues, {len(self.failed)} failed, {self.seconds:.1f} s",
        ]
        lines += [f"- failed: `{p.move.vhost}` / `{p.move.queue}`: {p.outcome}" for p in self.failed[:50]]
        return "\n".join(lines)

    def _nodes(self) -> list[str]:
        return sorted(set(self.planned.before) | set(self.after.before))
