"""LoadQueues: classify and plan (READY); the plan goes to the store, one item per batch, never into
the payload. Also what ``load`` does to a run under way: a fresh plan from the cluster as it is now.

``plan_and_store`` is what LoadQueues (first plan, ``load``) and VerifyRound (next round) share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from queue_balancer.contract import PlanKind
from queue_balancer.errors import BalancerError
from queue_balancer.lifecycle import EVENTS_PER_PLANNING, RunInput, Step, advance
from queue_balancer.members import MembersPlan, plan_members
from queue_balancer.model import Plan, Snapshot
from queue_balancer.planner import plan
from queue_balancer.report import STORED_LIST, Report
from queue_balancer.workflow.leases import iso
from queue_balancer.workflow.ports import ClusterApi, LifecycleStore
from queue_balancer.workflow.run_state import RunState

T = TypeVar("T")


class MalformedItem(BalancerError):
    """A run's stored item does not have the shape this code writes (written by hand, or by a bug)."""


@dataclass(frozen=True)
class Planned:
    """The run pointed at the first batch of its new plan, and the plan."""

    run: RunState
    plan: Plan | MembersPlan


def load_plan(db: LifecycleStore, client: ClusterApi, config: RunInput, run: RunState) -> Planned:
    """Plan from the cluster as it is now and store the plan (READY). A first plan also keeps the run's
    configuration and its before figures for the report; after a ``load`` (or a re-plan by it) the run
    waits in READY for ``go``."""
    current = client.members_snapshot() if config.members else client.snapshot()
    reload = run.generation > 0
    run, result = plan_and_store(db, replace(run, round=max(run.round, 1)), config, current)
    if not reload:
        before = (
            result.distribution_dict()  # members per node, not the (possibly many) changes
            if isinstance(result, MembersPlan)
            else report_dict(Report.of(current, config.plan_options()))
        )
        db.put_meta(
            run.run_id,
            config=config.to_dict(),
            started_at=int(run.started_at),
            cluster=run.cluster,
            kind=(PlanKind.MEMBERS if config.members else PlanKind.LEADERS).value,
            before=before,
        )
    record = db.lifecycle(run.cluster)
    db.save(record, advance(record, Step.PLANNED, now=iso(), counts=run.counts, round=run.round))
    awaiting = config.action == "load" or reload
    return Planned(replace(run, next="", awaiting_go=awaiting).spend(EVENTS_PER_PLANNING), result)


def plan_and_store(
    db: LifecycleStore,
    run: RunState,
    config: RunInput,
    current: Snapshot,
    result: Plan | MembersPlan | None = None,
) -> tuple[RunState, Plan | MembersPlan]:
    """Plan from ``current`` (unless ``result`` is that plan already), store it as a new generation of
    batches, point the run at its first batch. A ``members: true`` run plans quorum member changes
    (``current`` is then ``members_snapshot``'s) and stores them marked as such."""
    options = config.plan_options(quorum_transfer=True)
    generation, size = run.generation + 1, config.batch_size
    spread_now: int
    if config.members:
        members = (
            result if isinstance(result, MembersPlan) else plan_members(current, config.members_options())
        )
        db.put_plan(run.run_id, generation, _chunks(members.moves, size), PlanKind.MEMBERS)
        result, spread_now = members, members.spread_before
    else:
        leaders = result if isinstance(result, Plan) else plan(current, options)
        db.put_plan(run.run_id, generation, _chunks(leaders.moves, size))
        result, spread_now = leaders, Report.of(current, options).spread
    batches = -(-len(result.moves) // size)
    # What `status` lists while the run goes on (its report, once written, lists the queues skipped then).
    db.put_meta(run.run_id, skipped=[s.to_dict() for s in result.skipped[:STORED_LIST]])
    updated = replace(
        run,
        generation=generation,
        batch=0,
        batches=batches,
        plan_moves=len(result.moves),
        attempted=0,
        current={},
        skipped=len(result.skipped),
        round_spread=spread_now,
    )
    return updated, result


def _chunks(moves: Sequence[T], size: int) -> list[Sequence[T]]:
    return [moves[i : i + size] for i in range(0, len(moves), size)]


def report_dict(report: Report) -> dict[str, object]:
    """What the run keeps of the before report: the tables, not the (possibly long) skipped list."""
    return {
        "nodes": list(report.nodes),
        "by_type": {t: dict(c) for t, c in report.by_type.items()},
        "by_vhost": {v: dict(c) for v, c in report.by_vhost.items()},
    }


def report_from_dict(data: dict[str, object]) -> Report:
    """The before report ``report_dict`` kept (``MalformedItem`` if the stored item is not its shape)."""
    nodes = data.get("nodes") or []
    by_type = data.get("by_type") or {}
    by_vhost = data.get("by_vhost") or {}
    if not (isinstance(nodes, list) and isinstance(by_type, dict) and isinstance(by_vhost, dict)):
        raise MalformedItem(f"the run's stored before report is not a report's tables: {data!r:.200}")
    return Report(nodes=tuple(nodes), by_type=by_type, by_vhost=by_vhost, skipped=())
