"""Plan and store: what LoadQueues (first plan, ``load``) and VerifyRound (next round) share."""

from __future__ import annotations

from dataclasses import replace

from queue_balancer.lifecycle import RunInput
from queue_balancer.model import Plan, Snapshot
from queue_balancer.planner import plan
from queue_balancer.report import Report
from queue_balancer.workflow.ports import LifecycleStore
from queue_balancer.workflow.run_state import RunState


def plan_and_store(
    db: LifecycleStore, run: RunState, config: RunInput, current: Snapshot, result: Plan | None = None
) -> tuple[RunState, Plan]:
    """Plan from ``current`` (unless ``result`` is that plan already), store it as a new generation of
    batches, point the run at its first batch."""
    options = config.plan_options(quorum_transfer=True)
    result = result or plan(current, options)
    generation = run.generation + 1
    batches = [
        result.moves[i : i + config.batch_size] for i in range(0, len(result.moves), config.batch_size)
    ]
    db.put_plan(run.run_id, generation, batches)
    updated = replace(
        run,
        generation=generation,
        batch=0,
        batches=len(batches),
        plan_moves=len(result.moves),
        attempted=0,
        current={},
        skipped=len(result.skipped),
        round_spread=Report.of(current, options).spread,
    )
    return updated, result


def report_dict(report: Report) -> dict[str, object]:
    """What the run keeps of the before report: the tables, not the (possibly long) skipped list."""
    return {
        "nodes": list(report.nodes),
        "by_type": {t: dict(c) for t, c in report.by_type.items()},
        "by_vhost": {v: dict(c) for v, c in report.by_vhost.items()},
    }


def report_from_dict(data: dict[str, object]) -> Report:
    nodes = data.get("nodes") or []
    by_type = data.get("by_type") or {}
    by_vhost = data.get("by_vhost") or {}
    assert isinstance(nodes, list) and isinstance(by_type, dict) and isinstance(by_vhost, dict)
    return Report(nodes=tuple(nodes), by_type=by_type, by_vhost=by_vhost, skipped=())
