"""FinishRun: the last state, after the DynamoDB lock is released: the cluster's own lock (the CLI's)
is given back and the lifecycle goes back to IDLE.

``stop`` keeps the counts for ``info``; ``reset`` clears them and deletes the run's stored plan. If a
new run took the cluster in the instant since the lock was released, its item is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from queue_balancer.lifecycle import Outcome, State, finished
from queue_balancer.lock import GlobalParameters, LockLost
from queue_balancer.model import JsonDict
from queue_balancer.workflow.leases import iso, run_lock
from queue_balancer.workflow.ports import LifecycleStore
from queue_balancer.workflow.run_state import RunState


@dataclass(frozen=True)
class Finished:
    """The lifecycle's state once the run is over (another run's, if one took the cluster), and how
    the run ended."""

    state: State
    outcome: str

    def to_dict(self) -> JsonDict:
        return {"state": self.state.value, "outcome": self.outcome}


def finish_run(db: LifecycleStore, client: GlobalParameters, run: RunState) -> Finished:
    """Give the cluster's lock back (a no-op if another run holds it now) and mark the run's end."""
    run_lock(client, run.run_id).release()
    record = db.lifecycle(run.cluster)
    outcome = run.outcome or Outcome.COMPLETED.value
    if record.run_id != run.run_id:
        return Finished(record.state, outcome)
    clear = outcome == Outcome.RESET.value
    try:
        db.save(record, finished(record, outcome, now=iso(), counts=run.counts, clear=clear))
    except LockLost:  # a new run took the lifecycle meanwhile
        return Finished(State.IDLE, outcome)
    if clear:
        db.delete_run(run.run_id)
    return Finished(State.IDLE, outcome)
