"""The workflow's pacing: what each step costs in history events, when a run continues, the lock's lease.

Step Functions fails an execution whose history would exceed 25,000 events. A run's batches are driven
in slices (``queue_balancer.batch_slice``): each ControlCheck and each RunBatch slice has a fixed cost,
whatever the number of moves in it, so the run checks before every step that one more step plus the
reserve for its end still fit, and otherwise continues in a fresh execution (the batch under way is
kept in DynamoDB and resumed there). ``executions_for`` is the same arithmetic for a whole plan.
"""

from __future__ import annotations

import math

HISTORY_LIMIT = 25_000
"""Step Functions fails an execution whose history would exceed this many events."""
HISTORY_RESERVE = 300
"""Events kept free for the run's start and end (lock, preflight, plan, report, notify, release, failure path)."""
EVENTS_AT_START = 60
"""What an execution has spent when its first control check runs (start, lock, preflight, plan, wait for go)."""
EVENTS_PER_SLICE = 9
"""One slice of a batch: RunBatch task (5), its Choice (2), and the Wait before the next slice (2)."""
EVENTS_PER_RETRY = 3
"""A failed attempt of a Lambda task before its retry: scheduled, started, failed."""
EVENTS_PER_BATCH = 7
"""ControlCheck task (5) and its Choice (2) before a batch (or the resumption of one)."""
EVENTS_PER_CONTROL = 15
"""A control check that does not start a batch (5 + 2), plus a parked task (6) and 2 for margin."""
EVENTS_PER_PLANNING = 7
"""LoadQueues or VerifyRound task (5) and the Choice after it (2)."""
LOCK_MARGIN_SECONDS = 600
PARK_TIMEOUT_SECONDS = 86_400
"""How long a run waits for `go` or `continue` (the parked task's TimeoutSeconds in the ASL)."""


def fits_in_history(used: int, next_step_events: int) -> bool:
    """Whether the next step can run in this execution, keeping the reserve for the run's end."""
    return used + next_step_events + HISTORY_RESERVE <= HISTORY_LIMIT


def executions_for(moves: int, batch_size: int, slices_per_batch: int = 1) -> int:
    """How many executions a plan of ``moves`` takes when each batch needs ``slices_per_batch`` slices.

    The same rule the workflow applies step by step: a batch starts only if its control check and one
    slice fit, a slice runs only if it and a control check fit; otherwise the run continues anew.
    """
    if moves <= 0:
        return 1
    executions, used = 1, EVENTS_AT_START
    for _ in range(math.ceil(moves / batch_size)):
        if not fits_in_history(used, EVENTS_PER_BATCH + EVENTS_PER_SLICE):
            executions, used = executions + 1, EVENTS_AT_START
        used += EVENTS_PER_BATCH
        for _ in range(slices_per_batch):
            if not fits_in_history(used, EVENTS_PER_SLICE + EVENTS_PER_CONTROL):
                executions, used = executions + 1, EVENTS_AT_START + EVENTS_PER_BATCH
            used += EVENTS_PER_SLICE
    return executions
