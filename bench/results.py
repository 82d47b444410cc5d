"""One record per (RabbitMQ version, workload, tool, repeat), and the one markdown table made of them.

Why medians with min-max: repeats on a shared 2-core machine are noisy; the median is robust to one slow
run and the range shows how noisy it was. Counts that must not vary (spread, losses, leftover policies)
are shown as the worst repeat, so a single bad run cannot hide behind two good ones.

The table is one row per (RabbitMQ version, workload, tool): a bench of another version (RabbitMQ 4.0,
other tools such as ``rabbitmq-queues rebalance quorum``) adds records with its own ``rabbitmq`` and
``tool`` and gets its rows in the same table, after the known tools in ``TOOL_ORDER``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bench.tools import BUILTIN, CLI_ENGINE, STATE_MACHINE
from bench.workloads import Workload

TOOL_ORDER = (CLI_ENGINE, STATE_MACHINE, BUILTIN)
WORKFLOW_TARGET = 1.5
"""The state machine with its default input takes at most this times the CLI engine's time (issue 9)."""


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
    spread_by_type_after: Mapping[str, int] = field(default_factory=dict)
    """Spread of each queue type's leaders after the run."""
    rabbitmq: str = ""
    """The cluster's RabbitMQ version, e.g. 3.10.8: rows of other versions go in the same table."""
    execution_seconds: float | None = None
    """State machine only: the execution's own duration, without the CLI command that follows it."""

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
    """The aggregate of the repeats of one tool on one workload of one RabbitMQ version."""

    workload: Workload
    tool: str
    runs: tuple[RunRecord, ...]

    @property
    def rabbitmq(self) -> str:
        return self.runs[0].rabbitmq

    @property
    def median_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def median_execution(self) -> float | None:
        """The state machine's own median duration, when the tool is the state machine."""
        inner = [r.execution_seconds for r in self.runs if r.execution_seconds is not None]
        return statistics.median(inner) if inner else None

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
            self.rabbitmq or "?",
            self.workload.label,
            self.tool + (f" ({errors} error(s))" if errors else ""),
            f"{statistics.median(seconds):.1f} ({min(seconds):.1f}-{max(seconds):.1f})"
            + ("" if self.median_execution is None else f"; execution {self.median_execution:.1f}"),
            _restored(restored, len(runs)),
            f"{_values(r.spread_before for r in runs)} → {worst} (best {best}) {mark}",
            _by_type(runs),
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
    "RabbitMQ",
    "workload",
    "tool",
    "wall time s, median (min-max)",
    "all replicas in sync after s",
    "spread before → after (best reachable)",
    "spread after per type",
    "moves",
    "messages lost",
    "temporary policies left",
)


def _by_type(runs: Sequence[RunRecord]) -> str:
    """The worst repeat's spread of every queue type, e.g. ``classic 0, quorum 1``."""
    types = sorted({t for r in runs for t in r.spread_by_type_after})
    return ", ".join(f"{t} {max(r.spread_by_type_after.get(t, 0) for r in runs)}" for t in types) or "-"


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
    """One row per (RabbitMQ version, workload, tool) that has records: versions in the order they were
    measured, then the workloads' order, then the known tools before any other."""
    versions = list(dict.fromkeys(r.rabbitmq for r in records))
    tools = list(TOOL_ORDER) + [t for t in dict.fromkeys(r.tool for r in records) if t not in TOOL_ORDER]
    result = []
    for version in versions:
        for workload in workloads:
            for tool in tools:
                runs = tuple(
                    r
                    for r in records
                    if r.rabbitmq == version and r.workload == workload.key and r.tool == tool
                )
                if runs:
                    result.append(Row(workload, tool, runs))
    return result


def markdown_table(table: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 7) + "|"]
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
    """Medians against the targets: the CLI engine against the built-in, the state machine against the
    CLI engine (at most ``WORKFLOW_TARGET`` times its time) and against the built-in."""
    lines = []
    by_workload: dict[tuple[str, str], dict[str, Row]] = {}
    for row in table:
        by_workload.setdefault((row.rabbitmq, row.workload.key), {})[row.tool] = row
    for pair in by_workload.values():
        builtin, cli, workflow = pair.get(BUILTIN), pair.get(CLI_ENGINE), pair.get(STATE_MACHINE)
        if cli and builtin:
            ratio = builtin.median_seconds / cli.median_seconds
            if cli.workload.kind == "mirrored":
                target, met = "target ≥ 3x faster", ratio >= 3
            else:
                target, met = "target ≤ 2x the built-in's time", ratio >= 0.5
            lines.append(_speed_line(cli, builtin, ratio, target, met))
        if workflow and cli:
            ratio = workflow.median_seconds / cli.median_seconds
            target = f"target ≤ {WORKFLOW_TARGET}x the CLI engine's time"
            execution = workflow.median_execution
            lines.append(
                f"- ({cli.workload.key}) state machine {workflow.median_seconds:.1f} s (`run --wait`) vs CLI "
                f"engine {cli.median_seconds:.1f} s → {ratio:.2f}x ({target}: "
                f"{'met' if ratio <= WORKFLOW_TARGET else 'NOT met'})"
                + (
                    ""
                    if execution is None
                    else f"; the execution alone {execution:.1f} s → {execution / cli.median_seconds:.2f}x"
                )
            )
        if workflow and builtin and workflow.workload.kind == "mirrored":
            ratio = builtin.median_seconds / workflow.median_seconds
            lines.append(_speed_line(workflow, builtin, ratio, "target faster", ratio > 1))
    return lines


def _speed_line(ours: Row, theirs: Row, ratio: float, target: str, met: bool) -> str:
    relation = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
    return (
        f"- ({ours.workload.key}) {ours.workload.kind}: {ours.tool} {ours.median_seconds:.1f} s vs built-in "
        f"{theirs.median_seconds:.1f} s → {relation} ({target}: {'met' if met else 'NOT met'})"
    )


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
