"""Putting every leader of a seeded workload on one node, and waiting until classic mirrors are in sync.

A workload that is only mostly unbalanced makes benchmarks lie, so the seeder verifies the placement and
moves stragglers itself (e.g. after a previous balance) instead of assuming where declares landed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from queue_balancer.local.cluster import LocalCluster
from queue_balancer.local.seed_target import SeedEndpoint, SeedError, leader_of, queues_now

Progress = Callable[[str], None]


def put_leaders_on_node(
    endpoint: SeedEndpoint, vhost: str, names: Sequence[str], deadline: float, progress: Progress
) -> int:
    """Verify every leader is on the seeding node; transfer the ones that are not (e.g. after a balance).

    Classic queues move with ``rabbit_mirror_queue_misc:transfer_leadership`` once the target holds a
    synchronised mirror (otherwise messages would be lost); quorum queues with Ra's leader transfer
    (``rabbit_quorum_queue:transfer_leadership``). Both need the Erlang CLI, hence a LocalCluster.
    """
    target = endpoint.leader_node
    wanted = set(names)
    attempted: dict[str, float] = {}  # queue -> when its transfer was last asked for
    while True:
        current = {q["name"]: q for q in queues_now(endpoint.client, vhost) if q["name"] in wanted}
        absent = sorted(wanted - current.keys())
        if absent:
            raise SeedError(f"queue(s) vanished while seeding vhost {vhost!r}: {', '.join(absent[:5])}")
        stragglers = {n: q for n, q in current.items() if leader_of(q) != target}
        if not stragglers:
            return len(attempted)
        if endpoint.cluster is None:
            raise SeedError(
                f"{len(stragglers)} queue(s) have their leader elsewhere than {target} (e.g. "
                f"{next(iter(stragglers))}); moving them needs the Erlang CLI: seed a LocalCluster, "
                "or delete those queues and seed again"
            )
        now = time.monotonic()
        ready = {
            n: q
            for n, q in stragglers.items()
            if (q.get("type") == "quorum" or target in (q.get("synchronised_slave_nodes") or []))
            and now - attempted.get(n, -1e9) > 10  # a transfer takes effect in well under 10 s
        }
        if ready:
            progress(f"moving {len(ready)} leader(s) to {target}")
            _transfer_leaders(endpoint.cluster, vhost, ready, target)
            attempted.update(dict.fromkeys(ready, now))
        if time.monotonic() > deadline:
            detail = ", ".join(f"{n} on {leader_of(q)}" for n, q in list(stragglers.items())[:5])
            raise SeedError(
                f"{len(stragglers)} leader(s) are not on {target} in time ({detail}); a quorum queue "
                f"needs a member on {target}, a classic queue a synchronised mirror there (HA policy)"
            )
        time.sleep(0.5)


def _transfer_leaders(
    cluster: LocalCluster, vhost: str, queues: Mapping[str, Mapping[str, Any]], target: str
) -> None:
    """One ``rabbitmqctl eval`` for the whole batch: most of its 0.3-1 s is CLI start-up."""
    modules = {"quorum": "rabbit_quorum_queue"}
    items = ",".join(
        "{" + modules.get(str(q.get("type")), "rabbit_mirror_queue_misc") + "," + _erlang_binary(name) + "}"
        for name, q in queues.items()
    )
    expression = (
        f"[case rabbit_amqqueue:lookup(rabbit_misc:r({_erlang_binary(vhost)}, queue, N)) of "
        f"{{ok, Q}} -> catch M:transfer_leadership(Q, '{target}'); E -> E end || {{M, N}} <- [{items}]]"
    )
    cluster.eval_erlang(expression, timeout=120)


def _erlang_binary(text: str) -> str:
    """A UTF-8 Erlang binary literal for any queue or vhost name."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'<<"{escaped}"/utf8>>'


def await_mirrors_synchronised(
    endpoint: SeedEndpoint, vhost: str, names: Sequence[str], deadline: float, progress: Progress
) -> None:
    """Wait until every classic queue has a synchronised mirror on every other running node.

    ha-mode all implies N-1 mirrors; judging against that count (not against ``slave_nodes``, which can
    still hold a leftover after a transfer) is what "in sync" means for the balancer too.
    """
    running = {str(n["name"]) for n in endpoint.client.nodes() if n.get("running")}
    wanted = set(names)
    progress(f"waiting for the mirrors of {len(names)} classic queue(s) to synchronise")
    while True:
        lagging = []
        for queue in queues_now(endpoint.client, vhost):
            if queue["name"] not in wanted:
                continue
            expected = running - {leader_of(queue)}
            if not expected <= set(queue.get("synchronised_slave_nodes") or []):
                lagging.append(queue["name"])
        if not lagging:
            return
        if time.monotonic() > deadline:
            raise SeedError(
                f"{len(lagging)} classic queue(s) in vhost {vhost!r} have unsynchronised mirrors after the "
                f"deadline (e.g. {lagging[0]}); check the {next(iter(names)).rsplit('.', 1)[0]}-ha policy and "
                "the nodes' logs"
            )
        time.sleep(0.5)
