"""One record per (workload, tool, repeat), and the one markdown table made of them.

Why medians with min-max: three repeats on a shared 2-core machine are noisy; the median is robust to
one slow run and the range shows how noisy it was. Counts that must not vary (spread, losses, leftover
policies) are shown as the worst repeat, so a single bad run cannot hide behind two good ones.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bench.workloads import Workload

BALANCER = "queue-balancer"
BUILTIN = "rabbitmq-queues rebalance all"


@dataclass(frozen=True)
class RunRecord:
    """Everything measured about one tool on one freshly seeded workload."""

    workload: str
    tool: str
    repeat: int
    seconds: float
    """Wall time of the tool's command only."""
    restored: float | None
    """From the command's start until the real-time view showed every replica in sync again."""
    settle_wait: float
    """How long the statistics took to catch up after the command (not part of ``seconds``)."""
    settled: bool
    best_spread: int
    spread_before: int
    spread_after: int
    leaders_after: Mapping[str, int]
    moves: int
    messages_before: int
    messages_after: int
    temporary_policies: Sequence[str]
    amqp_total: int | None = None
    drained_queue: str = ""
    drained: int | None = None
    drained_expected: int | None = None
    exit_code: int = 0
    error: str = ""
    balancer: Mapping[str, Any] = field(default_factory=dict)
    """The balancer's own figures: moves done/failed, its in-process seconds, per-move seconds."""

    @property
    def lost(self) -> int:
        """Messages lost according to the settled statistics view."""
        return self.messages_before - self.messages_after

    @property
    def amqp_lost(self) -> int | None:
        """Messages lost according to the queues' own counts (AMQP passive declare), when checked."""
        return None if self.amqp_total is None else self.messages_before - self.amqp_total

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """The inverse of ``to_dict`` (derived fields are dropped), for re-rendering saved results."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lost"] = self.lost
        data["amqp_lost"] = self.amqp_lost
        return data


@dataclass(frozen=True)
class Row:
    """The aggregate of the repeats of one tool on one workload."""

    workload: Workload
    tool: str
    runs: tuple[RunRecord, ...]

    @property
    def median_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def cells(self) -> list[str]:
        runs = self.runs
        seconds = [r.seconds for r in runs]
        restored = [r.restored for r in runs if r.restored is not None]
        best = max(r.best_spread for r in runs)
        worst = max(r.spread_after for r in runs)
        mark = "✓" if worst <= best else "✗"
        errors = sum(1 for r in runs if r.error)
        unsettled = [r for r in runs if not r.settled]
        confirmed = all(r.amqp_lost == r.lost for r in unsettled)
        lost = _values(r.lost for r in runs)
        if any(r.amqp_lost is not None and r.amqp_lost != r.lost for r in runs):
            lost += f" (exact: {_values(r.lost if r.amqp_lost is None else r.amqp_lost for r in runs)}) ²"
        return [
            self.workload.label,
            self.tool + (f" ({errors} error(s))" if errors else ""),
            f"{statistics.median(seconds):.1f} ({min(seconds):.1f}-{max(seconds):.1f})",
            _restored(restored, len(runs)),
            f"{_values(r.spread_before for r in runs)} → {worst} (best {best}) {mark}",
            _values(r.moves for r in runs),
            lost
            + (
                f" ({len(unsettled)} unsettled{', exact count agrees' if confirmed else ''})"
                if unsettled
                else ""
            ),
            _values(len(r.temporary_policies) for r in runs),
        ]


HEADER = (
    "workload",
    "tool",
    "wall time s, median (min-max)",
    "all replicas in sync after s",
    "spread before → after (best reachable)",
    "moves",
    "messages lost",
    "temporary policies left",
)


def _restored(restored: Sequence[float], runs: int) -> str:
    """Median over the runs that got there; "never" counts the ones that were left under-replicated."""
    never = runs - len(restored)
    if not restored:
        return "never ¹"
    text = f"{statistics.median(restored):.1f}"
    return text + (f" (never ¹ in {never} of {runs})" if never else "")


def _values(values: Iterable[int]) -> str:
    """One number when every repeat agrees, else every repeat's number (nothing averaged away)."""
    seen = list(values)
    return str(seen[0]) if len(set(seen)) == 1 else "/".join(map(str, seen))


def rows(workloads: Sequence[Workload], records: Sequence[RunRecord]) -> list[Row]:
    result = []
    for workload in workloads:
        for tool in (BALANCER, BUILTIN):
            runs = tuple(r for r in records if r.workload == workload.key and r.tool == tool)
            if runs:
                result.append(Row(workload, tool, runs))
    return result


def markdown_table(table: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 6) + "|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in table]
    notes = []
    if any(r.restored is None for row in table for r in row.runs):
        notes.append(
            "¹ 60 s after the command returned, some queue still lacked a synchronised replica (and still ran "
            "under the deleted temporary policy, when the balancer had moved it)."
        )
    if any(r.amqp_lost is not None and r.amqp_lost != r.lost for row in table for r in row.runs):
        notes.append("² the settled statistics disagreed with the queues' own counts (AMQP passive declare).")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def speed_lines(table: Sequence[Row]) -> list[str]:
    """Built-in median / balancer median per workload, against the project's targets."""
    lines = []
    by_workload: dict[str, dict[str, Row]] = {}
    for row in table:
        by_workload.setdefault(row.workload.key, {})[row.tool] = row
    for pair in by_workload.values():
        if BALANCER not in pair or BUILTIN not in pair:
            continue
        ours, theirs = pair[BALANCER], pair[BUILTIN]
        workload = ours.workload
        ratio = theirs.median_seconds / ours.median_seconds
        if workload.kind == "mirrored":
            target, met = "target ≥ 3x faster", ratio >= 3
        else:
            target, met = "target ≤ 2x the built-in's time", ratio >= 0.5
        verdict = "met" if met else "NOT met"
        relation = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
        lines.append(
            f"- ({workload.key}) {workload.kind}: queue-balancer {ours.median_seconds:.1f} s vs built-in "
            f"{theirs.median_seconds:.1f} s → {relation} ({target}: {verdict})"
        )
    return lines


def check_lines(records: Sequence[RunRecord]) -> list[str]:
    """The AMQP cross-checks and anything that went wrong, one line each."""
    lines = []
    checked = [r for r in records if r.amqp_total is not None]
    mismatches = [r for r in checked if r.amqp_total != r.messages_after]
    drains = [r for r in checked if r.drained is not None and r.drained_queue]
    bad_drains = [r for r in drains if r.drained != r.drained_expected]
    if checked:
        lines.append(
            f"- AMQP cross-check: in {len(checked) - len(mismatches)} of {len(checked)} runs the passive-declare "
            f"count of every queue summed to the settled statistics' total; {len(drains) - len(bad_drains)} of "
            f"{len(drains)} drained queues (one moved queue per run) delivered exactly the statistics' count."
        )
    for r in mismatches:
        lines.append(
            f"  - ({r.workload}) {r.tool} #{r.repeat}: AMQP {r.amqp_total} vs statistics {r.messages_after}"
        )
    for r in bad_drains:
        lines.append(
            f"  - ({r.workload}) {r.tool} #{r.repeat}: drained {r.drained} from {r.drained_queue}, "
            f"statistics said {r.drained_expected}"
        )
    for r in records:
        if r.error:
            lines.append(f"- ({r.workload}) {r.tool} #{r.repeat}: exit {r.exit_code}: {r.error}")
        if not r.settled:
            lines.append(f"- ({r.workload}) {r.tool} #{r.repeat}: statistics did not settle in time")
        failed = r.balancer.get("moves_failed")
        if failed:
            lines.append(
                f"- ({r.workload}) {r.tool} #{r.repeat}: {failed} move(s) failed: {r.balancer.get('failures')}"
            )
    return lines
