"""Leader distribution tables: text for terminals, JSON for machines, markdown for SNS and tickets."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from queue_balancer.members import mirror_spread
from queue_balancer.model import JsonDict, QueueType, Skipped, Snapshot, equilibrium, spread
from queue_balancer.movers import MoveProgress, Phase
from queue_balancer.movers.policies import is_temporary, owning_run
from queue_balancer.movers.stream import left_elsewhere
from queue_balancer.movers.verify import CHANGED_UNDER_TRAFFIC
from queue_balancer.planner import PlanOptions, survey

STORED_LIST = 50
"""Failed moves or skipped queues a stored run item lists at most (an item has a size limit)."""


@dataclass(frozen=True)
class Pinned:
    """A queue whose effective policy is a balancer's temporary one: its own policy does not apply."""

    vhost: str
    queue: str
    node: str
    policy: str
    run: str
    """The run that put the policy ("" for an older version's)."""

    def to_dict(self) -> JsonDict:
        return {
            "vhost": self.vhost,
            "queue": self.queue,
            "node": self.node,
            "policy": self.policy,
            "run": self.run,
        }


PINNED_ADVICE = (
    "a move under way, or left by a run that died: every `balance` and workflow run removes dead runs' "
    "temporary policies first, `queue-balancer cleanup` does it now"
)


def pinned_queues(snapshot: Snapshot) -> tuple[Pinned, ...]:
    """The queues a temporary policy governs (as the statistics view shows them, ~5 s behind)."""
    return tuple(
        Pinned(q.vhost, q.name, q.leader, q.policy, owning_run(q.policy))
        for q in snapshot.queues
        if q.policy and is_temporary(q.policy)
    )


def pinned_lines(pinned: Sequence[Pinned], limit: int = 20) -> list[str]:
    if not pinned:
        return []
    lines = ["", f"Under a temporary policy ({len(pinned)}): {PINNED_ADVICE}"]
    lines += [
        f"  {p.queue!r} in vhost {p.vhost!r} on {p.node}: {p.policy}" + (f" (run {p.run})" if p.run else "")
        for p in pinned[:limit]
    ]
    if len(pinned) > limit:
        lines.append(f"  ... and {len(pinned) - limit} more (--format json lists them all)")
    return lines


@dataclass(frozen=True)
class Report:
    """Leaders per node, split by queue type and by vhost, with the queues that cannot move and those a
    temporary policy governs."""

    nodes: tuple[str, ...]
    by_type: Mapping[str, Mapping[str, int]]
    by_vhost: Mapping[str, Mapping[str, int]]
    skipped: tuple[Skipped, ...]
    pinned: tuple[Pinned, ...] = ()
    exactly_copies: Mapping[str, int] = field(default_factory=dict)
    """Classic queues under ``ha-mode: exactly``: copies (master and mirrors) per running node. RabbitMQ
    picks their mirror nodes itself, so after a node change they may crowd some nodes: reported only."""

    @property
    def leaders(self) -> dict[str, int]:
        total: Counter[str] = Counter({n: 0 for n in self.nodes})
        for counts in self.by_type.values():
            total.update(counts)
        return dict(total)

    @property
    def spread(self) -> int:
        return spread(self.leaders)

    @property
    def spread_by_type(self) -> dict[str, int]:
        """Spread of each queue type on its own: a node leading all quorum queues is hot at even totals."""
        return {t: spread(c) for t, c in self.by_type.items()}

    @property
    def equilibrium(self) -> float:
        return equilibrium(self.leaders)

    @classmethod
    def of(cls, snapshot: Snapshot, options: PlanOptions | None = None) -> Report:
        found = survey(snapshot, options or PlanOptions())
        by_type: dict[str, Counter[str]] = defaultdict(Counter)
        by_vhost: dict[str, Counter[str]] = defaultdict(Counter)
        for q in found.counted:
            by_type[q.type.value][q.leader] += 1
            by_vhost[q.vhost][q.leader] += 1
        return cls(
            nodes=found.nodes,
            by_type={t: _complete(c, found.nodes) for t, c in sorted(by_type.items())},
            by_vhost={v: _complete(c, found.nodes) for v, c in sorted(by_vhost.items())},
            skipped=found.skipped,
            pinned=pinned_queues(snapshot),
            exactly_copies=mirror_spread(snapshot, options or PlanOptions()),
        )

    def to_dict(self) -> JsonDict:
        return {
            "nodes": list(self.nodes),
            "leaders": self.leaders,
            "by_type": {t: dict(c) for t, c in self.by_type.items()},
            "by_vhost": {v: {**c, "spread": spread(c)} for v, c in self.by_vhost.items()},
            "spread": self.spread,
            "spread_by_type": self.spread_by_type,
            "equilibrium": round(self.equilibrium, 3),
            "skipped": [s.to_dict() for s in self.skipped],
            "pinned": [p.to_dict() for p in self.pinned],
            "exactly_copies": dict(self.exactly_copies),
            "exactly_copies_spread": spread(self.exactly_copies),
        }


def _complete(counts: Mapping[str, int], nodes: Sequence[str]) -> dict[str, int]:
    return {n: counts.get(n, 0) for n in nodes}


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    return [line(header), *(line(r) for r in cells)]


def _figures(report: Report) -> str:
    by_type = ", ".join(f"{t} {s}" for t, s in report.spread_by_type.items())
    return (
        f"spread (max - min): {report.spread}{f' ({by_type})' if by_type else ''}   "
        f"equilibrium (least-loaded node / even share): {report.equilibrium:.0%}"
    )


def text(report: Report, *, skipped_limit: int = 20, per_vhost: bool = False) -> str:
    """The report for a terminal."""
    types = list(report.by_type)
    leaders = report.leaders
    lines = [f"Leaders per node ({len(report.nodes)} running nodes, {sum(leaders.values())} queues)"]
    lines += _table(
        ["node", "total", *types],
        ([n, leaders[n], *(report.by_type[t][n] for t in types)] for n in report.nodes),
    )
    lines.append(_figures(report))
    if per_vhost or len(report.by_vhost) > 1:
        lines += ["", "Per vhost"]
        lines += _table(
            ["vhost", *report.nodes, "spread"],
            ([v, *(c[n] for n in report.nodes), spread(c)] for v, c in report.by_vhost.items()),
        )
    lines += exactly_lines(report.exactly_copies)
    lines += skipped_lines(report.skipped, skipped_limit)
    lines += pinned_lines(report.pinned, skipped_limit)
    return "\n".join(lines)


def exactly_lines(copies: Mapping[str, int]) -> list[str]:
    """The mirror spread of ``ha-mode: exactly`` queues, when there are any."""
    if not copies:
        return []
    lines = [
        "",
        "Classic queues under ha-mode exactly: copies per node (master and mirrors; RabbitMQ places them)",
    ]
    lines += _table(["node", "copies"], ([n, c] for n, c in copies.items()))
    lines.append(f"spread (max - min): {spread(copies)}")
    return lines


def skipped_lines(skipped: Sequence[Skipped], limit: int) -> list[str]:
    if not skipped:
        return []
    lines = ["", f"Skipped ({len(skipped)}): these queues stay where they are"]
    lines += [f"  {s.queue!r} in vhost {s.vhost!r} on {s.node}: {s.reason}" for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more (--format json lists them all)")
    return lines


def markdown(report: Report) -> str:
    """The report for SNS messages and tickets."""
    types = list(report.by_type)
    leaders = report.leaders
    lines = ["| node | total | " + " | ".join(types) + " |", "|---|---:|" + "---:|" * len(types)]
    lines += [
        f"| {n} | {leaders[n]} | " + " | ".join(str(report.by_type[t][n]) for t in types) + " |"
        for n in report.nodes
    ]
    lines += ["", _figures(report)]
    if report.skipped:
        lines += ["", f"Skipped: {len(report.skipped)} queues"]
        lines += [f"- `{s.vhost}` / `{s.queue}` on {s.node}: {s.reason}" for s in report.skipped[:50]]
    if report.pinned:
        lines += ["", f"Under a temporary policy: {len(report.pinned)} queues ({PINNED_ADVICE})"]
        lines += [f"- `{p.vhost}` / `{p.queue}`: `{p.policy}`" for p in report.pinned[:50]]
    return "\n".join(lines)


@dataclass(frozen=True)
class RunSummary:
    """Before and after of one balancing run, with what happened to every move."""

    before: Report
    after: Report
    moves: tuple[MoveProgress, ...]
    seconds: float

    @property
    def failed(self) -> tuple[MoveProgress, ...]:
        return tuple(p for p in self.moves if p.phase is Phase.FAILED)

    @property
    def changed_under_traffic(self) -> tuple[MoveProgress, ...]:
        """Done, but the message count changed meanwhile (clients kept using the queue)."""
        return tuple(p for p in self.moves if p.outcome.startswith(CHANGED_UNDER_TRAFFIC))

    @property
    def best_effort(self) -> tuple[MoveProgress, ...]:
        """Stream moves (``--move-streams``): landed or left by the coordinator on another member, said so."""
        return tuple(p for p in self.moves if p.move.type is QueueType.STREAM and p.phase is Phase.DONE)

    @property
    def streams_left(self) -> tuple[MoveProgress, ...]:
        """Stream moves that ended without landing: neither failed nor done (``--move-streams``)."""
        return left_elsewhere(self.moves)

    @property
    def done(self) -> int:
        """Moves that did what was planned: not failed, and not a stream left on another member."""
        return len(self.moves) - len(self.failed) - len(self.streams_left)

    def headline(self) -> str:
        """``N done (...), M failed``, with the streams left elsewhere counted apart."""
        changed = (
            f" ({len(self.changed_under_traffic)} changed under traffic)"
            if self.changed_under_traffic
            else ""
        )
        left = f", {len(self.streams_left)} streams left elsewhere (best effort)" if self.streams_left else ""
        return f"moves: {self.done} done{changed}{left}, {len(self.failed)} failed"

    def brief_dict(self, limit: int = STORED_LIST) -> JsonDict:
        """The figures of the run with at most ``limit`` failed moves and skipped queues listed (a stored
        item has a size limit; the counts say how many there were)."""
        return {
            "before": self.before.leaders,
            "after": self.after.leaders,
            "spread": {"before": self.before.spread, "after": self.after.spread},
            "equilibrium": {
                "before": round(self.before.equilibrium, 3),
                "after": round(self.after.equilibrium, 3),
            },
            "moves_done": self.done,
            "moves_failed": len(self.failed),
            "streams_left": len(self.streams_left),
            "skipped_count": len(self.after.skipped),
            "seconds": round(self.seconds, 2),
            "failed": [{**p.move.to_dict(), "outcome": p.outcome} for p in self.failed[:limit]],
            "best_effort": [{**p.move.to_dict(), "outcome": p.outcome} for p in self.best_effort[:limit]],
            "skipped": [s.to_dict() for s in self.after.skipped[:limit]],
        }

    def to_dict(self) -> JsonDict:
        return {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "moves_done": self.done,
            "moves_changed_under_traffic": len(self.changed_under_traffic),
            "streams_left": len(self.streams_left),
            "moves_failed": len(self.failed),
            "seconds": round(self.seconds, 2),
            "moves": [
                {
                    **p.move.to_dict(),
                    "result": p.phase.value,
                    "outcome": p.outcome,
                    "seconds": round(p.seconds, 2),
                    **({"offsets_verified": p.offsets_verified} if p.move.type is QueueType.STREAM else {}),
                }
                for p in self.moves
            ],
        }


def summary_text(run: RunSummary) -> str:
    """Before/after table for a terminal."""
    before, after = run.before.leaders, run.after.leaders
    nodes = sorted(set(before) | set(after))
    lines = ["Leaders per node, before -> after"]
    lines += _table(["node", "before", "after"], ([n, before.get(n, 0), after.get(n, 0)] for n in nodes))
    lines.append(
        f"spread {run.before.spread} -> {run.after.spread}   "
        f"equilibrium {run.before.equilibrium:.0%} -> {run.after.equilibrium:.0%}"
    )
    lines.append(f"{run.headline()}, {len(run.after.skipped)} queues skipped, {run.seconds:.1f} s")
    for p in run.moves:
        if p.outcome:
            lines.append(f"  {p.move.ref} ({p.move.source} -> {p.move.target}): {p.phase.value}, {p.outcome}")
    lines += skipped_lines(run.after.skipped, 20)
    return "\n".join(lines)


def summary_markdown(run: RunSummary) -> str:
    """Before/after for the SNS notification."""
    before, after = run.before.leaders, run.after.leaders
    nodes = sorted(set(before) | set(after))
    lines = ["| node | before | after |", "|---|---:|---:|"]
    lines += [f"| {n} | {before.get(n, 0)} | {after.get(n, 0)} |" for n in nodes]
    lines += [
        "",
        f"spread {run.before.spread} -> {run.after.spread}, "
        f"equilibrium {run.before.equilibrium:.0%} -> {run.after.equilibrium:.0%}",
        f"{run.headline()}, {len(run.after.skipped)} skipped, {run.seconds:.1f} s",
    ]
    lines += [f"- failed: `{p.move.vhost}` / `{p.move.queue}`: {p.outcome}" for p in run.failed[:50]]
    lines += [f"- stream `{p.move.vhost}` / `{p.move.queue}`: {p.outcome}" for p in run.best_effort[:50]]
    return "\n".join(lines)


SUBJECT_LIMIT = 100
"""SNS: a subject has at most 100 printable ASCII characters and no line breaks."""


def subject_line(text: str) -> str:
    """A notification subject SNS accepts, whatever the cluster or error names contain."""
    printable = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return printable[:SUBJECT_LIMIT]
