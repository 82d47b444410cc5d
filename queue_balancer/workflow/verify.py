"""VerifyRound: after the last batch of a plan, re-read the cluster and re-plan; another round while the
round policy says so (``safety.another_round``, ``members_run.another_members_round``), else the report.

Leaders are re-read through ``observe.settle``, which waits a bounded time for queues still syncing
(the statistics view lags); quorum members come from the real-time view, where nothing lags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from queue_balancer.lifecycle import EVENTS_PER_PLANNING, Outcome, RunInput, Step, advance
from queue_balancer.lifecycle.routing import Route
from queue_balancer.members import MembersPlan, plan_members
from queue_balancer.members_run import another_members_round
from queue_balancer.model import Plan, Snapshot, spread
from queue_balancer.movers.stream import streams_left
from queue_balancer.observe import settle
from queue_balancer.planner import plan
from queue_balancer.safety import another_round
from queue_balancer.workflow.leases import iso
from queue_balancer.workflow.planning import plan_and_store
from queue_balancer.workflow.ports import ClusterApi, LifecycleStore
from queue_balancer.workflow.run_state import RunState


@dataclass(frozen=True)
class Verified:
    """The run's next route (``next_round`` with its new plan stored, or ``finish``) and the figures of
    the round just verified."""

    run: RunState
    spread_after: int
    next_moves: int


def verify_round(db: LifecycleStore, client: ClusterApi, config: RunInput, run: RunState) -> Verified:
    """Re-read, re-plan, and plan the next round where it still improves the spread."""
    run = run.spend(EVENTS_PER_PLANNING)
    current: Snapshot
    replanned: Plan | MembersPlan
    if config.members:
        current = client.members_snapshot()
        replanned = plan_members(current, config.members_options())
        again = another_members_round(replanned, run.round, config.rounds)
        spread_after = replanned.spread_before
    else:
        current = settle(client, sleep=time.sleep, clock=time.monotonic)
        # A stream its coordinator left elsewhere is not restarted again in this run.
        options = replace(
            config.plan_options(quorum_transfer=True), streams_left=streams_left(db.results(run.run_id))
        )
        replanned = plan(current, options)
        again = another_round(replanned, run.round, config.rounds)
        spread_after = spread(replanned.before)
    if not again:
        finished = replace(run, next=Route.FINISH, outcome=Outcome.COMPLETED.value)
        return Verified(finished, spread_after, len(replanned.moves))
    planned, _ = plan_and_store(db, replace(run, round=run.round + 1), config, current, replanned)
    record = db.lifecycle(run.cluster)
    db.save(record, advance(record, Step.REPLANNED, now=iso(), counts=planned.counts, round=planned.round))
    return Verified(replace(planned, next=Route.NEXT_ROUND), spread_after, len(replanned.moves))
