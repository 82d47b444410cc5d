"""Which nodes are in maintenance mode (``rabbitmq-upgrade drain``): a drained node is never a move's target,
as for the built-in rebalance.

RabbitMQ 4 reports it in ``GET /api/nodes`` (``being_drained``); 3.10 does not (measured: no such field),
so there it is read through the same ``rabbitmqctl eval`` port the quorum leader transfers use, one call
for all nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from queue_balancer.leader_transfer import run_batch

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
