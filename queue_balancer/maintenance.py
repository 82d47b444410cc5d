"""Which nodes are in maintenance mode (``rabbitmq-upgrade drain``): a drained node is never a move's target,
as for the built-in rebalance.

RabbitMQ 4 reports it in ``GET /api/nodes`` (``being_drained``); 3.10 does not (measured: no such field),
so there it is read through the same ``rabbitmqctl eval`` port the quorum leader transfers use, one call
for all nodes (``rabbit_maintenance:is_being_drained_local_read/1``, in 3.8+ and 4.x). On AWS that eval is
the SSM document's fixed ``drained`` operation (``eval_document``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from functools import partial

from queue_balancer.leader_transfer import run_batch
from queue_balancer.model import Snapshot

DrainedReader = Callable[[Sequence[str]], Collection[str]]
"""Answers which of the given running nodes are in maintenance mode (where the API does not say it)."""

# Applied to {NodeName, _, _}; names travel base64-encoded like every other eval argument.
DRAINED_FUN = """
fun({N, _, _}) ->
    Name = base64:decode(N),
    #{node => Name, drained => rabbit_maintenance:is_being_drained_local_read(binary_to_atom(Name, utf8))}
end
"""


def drained_nodes(run_eval: Callable[[str], str], nodes: Iterable[str]) -> set[str]:
    """The nodes among ``nodes`` that are in maintenance mode, asked of the cluster in one eval."""
    answers = run_batch(run_eval, DRAINED_FUN, [(node, "", "") for node in nodes])
    return {str(a["node"]) for a in answers if a.get("drained") is True}


def drained_reader(run_eval: Callable[[str], str]) -> DrainedReader:
    """The reader that asks through ``run_eval`` (a local ``rabbitmqctl eval``, or SSM on AWS)."""
    return partial(drained_nodes, run_eval)


def with_maintenance(snapshot: Snapshot, reader: DrainedReader | None) -> Snapshot:
    """``snapshot`` with its drained nodes marked, read through ``reader`` where the API did not report
    them (3.x); unchanged (``drain_reported`` False) when there is no reader."""
    if snapshot.drain_reported or reader is None:
        return snapshot
    return snapshot.with_drained(reader(snapshot.running_nodes))
