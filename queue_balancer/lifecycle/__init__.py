"""The balancer's lifecycle on a cluster, by job.

- ``fsm``: the seed's FSM (states, operator events, workflow steps, ``decide``) and the lifecycle item;
- ``run_input``: the workflow's input (``RunInput``);
- ``pacing``: what each step costs in history events (continue-as-new), the lock's lease.

Everything is re-exported here, so ``from queue_balancer.lifecycle import RunInput`` keeps working (the
item keys are ``queue_balancer.contract``'s, re-exported for the same reason).
"""

from queue_balancer.contract import LIFECYCLE_SK, LOCK_SK, RUN_META_SK, batch_sk, cluster_pk, run_pk
from queue_balancer.lifecycle.fsm import (
    Action,
    BatchProgress,
    Control,
    Counts,
    Decision,
    Event,
    EventRefused,
    IllegalTransition,
    Lifecycle,
    Outcome,
    Reaction,
    State,
    Step,
    advance,
    decide,
    finished,
    started,
)
from queue_balancer.lifecycle.pacing import (
    EVENTS_AT_START,
    EVENTS_PER_BATCH,
    EVENTS_PER_CONTROL,
    EVENTS_PER_PLANNING,
    EVENTS_PER_RETRY,
    EVENTS_PER_SLICE,
    HISTORY_LIMIT,
    HISTORY_RESERVE,
    LOCK_MARGIN_SECONDS,
    PARK_TIMEOUT_SECONDS,
    executions_for,
    fits_in_history,
)
from queue_balancer.lifecycle.run_input import (
    ACTIONS,
    DEFAULT_BATCH,
    DEFAULT_CONCURRENCY,
    DEFAULT_POLL_SECONDS,
    IGNORED_FIELDS,
    MAX_BATCH,
    MAX_CONCURRENCY,
    MAX_POLL_SECONDS,
    MAX_ROUNDS,
    RunInput,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_BATCH",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_POLL_SECONDS",
    "EVENTS_AT_START",
    "EVENTS_PER_BATCH",
    "EVENTS_PER_CONTROL",
    "EVENTS_PER_PLANNING",
    "EVENTS_PER_RETRY",
    "EVENTS_PER_SLICE",
    "HISTORY_LIMIT",
    "HISTORY_RESERVE",
    "IGNORED_FIELDS",
    "LIFECYCLE_SK",
    "LOCK_MARGIN_SECONDS",
    "LOCK_SK",
    "MAX_BATCH",
    "MAX_CONCURRENCY",
    "MAX_POLL_SECONDS",
    "MAX_ROUNDS",
    "PARK_TIMEOUT_SECONDS",
    "RUN_META_SK",
    "Action",
    "BatchProgress",
    "Control",
    "Counts",
    "Decision",
    "Event",
    "EventRefused",
    "IllegalTransition",
    "Lifecycle",
    "Outcome",
    "Reaction",
    "RunInput",
    "State",
    "Step",
    "advance",
    "batch_sk",
    "cluster_pk",
    "decide",
    "executions_for",
    "finished",
    "fits_in_history",
    "run_pk",
    "started",
]
