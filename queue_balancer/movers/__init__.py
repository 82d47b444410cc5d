"""Carry out one move as a small state machine: start, observe, finish or roll back.

- ``progress``: where a move stands (``MoveProgress``, plain JSON) and its deadlines (``MoveSettings``)
- ``ports``: what a move needs from the cluster (management API, leader transfer, message counts)
- ``policies``: the temporary policy (name, exact pattern, keys), the queue's own policy
- ``leftovers``: ``cleanup`` of dead runs' temporary policies, keeping every synchronised copy
- ``classic``, ``quorum``, ``stream``, ``verify``: one function per phase of each kind of move
- ``mover``: the ``Mover`` that starts, advances (dispatching on the phase) and aborts moves
"""

from queue_balancer.movers.classic import MAX_NUDGES, expected_mirrors
from queue_balancer.movers.context import MoveContext
from queue_balancer.movers.leftovers import CleanupResult, cleanup
from queue_balancer.movers.mover import PHASES, Mover
from queue_balancer.movers.policies import (
    POLICY_PREFIX,
    derived_run_id,
    exact_pattern,
    temporary_policy_name,
)
from queue_balancer.movers.ports import LeaderTransfer, ManagementApi, MessageCounter, StreamTransfer
from queue_balancer.movers.progress import TERMINAL, MoveProgress, MoveSettings, Phase

__all__ = [
    "MAX_NUDGES",
    "PHASES",
    "POLICY_PREFIX",
    "TERMINAL",
    "CleanupResult",
    "LeaderTransfer",
    "ManagementApi",
    "MessageCounter",
    "MoveContext",
    "MoveProgress",
    "MoveSettings",
    "Mover",
    "Phase",
    "StreamTransfer",
    "cleanup",
    "derived_run_id",
    "exact_pattern",
    "expected_mirrors",
    "temporary_policy_name",
]
