"""An unbalanced workload to balance: every queue's leader on one node, with persistent messages.

Why it looks like this: the balancer's hard cases are exactly what a real "everything was declared through
one node" cluster shows - mirrored classic queues whose mirrors must be in sync before a move, quorum queues
whose leader is one Raft member among three, messages that make a move slow. ``seed`` builds that state
through the same public interfaces an application uses (AMQP with publisher confirms, the management API),
then *verifies* it (leaders, mirror synchronisation) instead of assuming it, because a workload that is
only mostly unbalanced makes benchmarks lie.

``seed_unmirrored`` adds the "fixed load" a benchmark needs around it: classic queues that no HA policy
matches, some empty (movable by the balancer) and some holding messages (skipped, with a reason).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from queue_balancer.errors import ManagementError, NotFound
from queue_balancer.local.cluster import LocalCluster
from queue_balancer.local.leader_placement import await_mirrors_synchronised, put_leaders_on_node
from queue_balancer.local.seed_amqp import declare_queues, publish_confirmed
from queue_balancer.local.seed_target import (
    SeedEndpoint,
    SeedError,
    SeedTarget,
    check_prefix,
    leader_of,
    queues_now,
    resolve_target,
)
from queue_balancer.management import ManagementClient, encode

__all__ = [
    "QUEUE_TYPES",
    "QueueType",
    "SeedError",
    "SeedSummary",
    "SeedTarget",
    "delete_seeded",
    "seed",
    "seed_unmirrored",
]

QueueType = Literal["classic", "quorum", "mixed"]
QUEUE_TYPES: tuple[QueueType, ...] = ("classic", "quorum", "mixed")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SeedSummary:
    """What ``seed`` left behind, as verified through the management API at the end."""

    vhost: str
    queue_names: tuple[str, ...]
    created: int  # queues declared by this run
    reused: int  # queues that existed already (messages were added to them)
    classic: int
    quorum: int
    messages_per_queue: int
    messages_published: int  # confirmed by the broker in this run, all queues together
    leader_node: str
    leaders_per_node: Mapping[str, int] = field(default_factory=dict)
    transferred: int = 0  # leaders that were elsewhere and were moved to leader_node
    seconds: float = 0.0

    @property
    def queues(self) -> int:
        """Number of queues the workload consists of."""
        return len(self.queue_names)


def seed(
    target: LocalCluster | SeedTarget,
    *,
    queues: int,
    messages: int,
    queue_type: QueueType = "classic",
    vhost: str = "/",
    prefix: str = "seed",
    on_node: int = 1,
    message_bytes: int = 64,
    timeout: float = 600.0,
    progress: Progress = lambda _: None,
) -> SeedSummary:
    """Create ``queues`` queues ``<prefix>.<n>`` in ``vhost``, all led by node ``on_node``, and publish
    ``messages`` persistent messages to **each** of them with publisher confirms.

    ``queue_type`` "classic" gets mirrored classic queues (policy ``<prefix>-ha``: ha-mode all, automatic
    sync), "quorum" quorum queues, "mixed" the first half classic and the rest quorum. Re-running is safe:
    existing queues of the wanted type are reused and get ``messages`` more each; one of another type is
    refused (SeedError), never silently counted as the type asked for. Returns
    once every leader is on ``on_node`` (stragglers are transferred, which needs a ``LocalCluster``) and
    every classic mirror is synchronised.
    """
    if queues < 1:
        raise SeedError(f"the number of queues must be at least 1, not {queues}")
    if messages < 0:
        raise SeedError(f"the number of messages per queue must be 0 or more, not {messages}")
    if queue_type not in QUEUE_TYPES:
        raise SeedError(f"queue type must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")
    check_prefix(prefix)
    started = time.monotonic()
    deadline = started + timeout
    endpoint = resolve_target(target, on_node)
    width = max(3, len(str(queues)))
    names = [f"{prefix}.{n:0{width}d}" for n in range(1, queues + 1)]
    classic_count = {"classic": queues, "quorum": 0, "mixed": (queues + 1) // 2}[queue_type]
    wanted: dict[str, Literal["classic", "quorum"]] = {
        name: ("classic" if i < classic_count else "quorum") for i, name in enumerate(names)
    }

    _ensure_vhost(endpoint, vhost, deadline, progress)
    existing = {q["name"]: q for q in queues_now(endpoint.client, vhost) if q["name"] in wanted}
    other_type = sorted(n for n, q in existing.items() if q.get("type", "classic") != wanted[n])
    if other_type:
        shown = ", ".join(f"{n} ({existing[n].get('type', 'classic')})" for n in other_type[:5])
        more = f" and {len(other_type) - 5} more" if len(other_type) > 5 else ""
        raise SeedError(
            f"{len(other_type)} queue(s) of prefix {prefix!r} in vhost {vhost!r} exist with another type than "
            f"{queue_type!r} asks for: {shown}{more}; choose another --prefix, or delete them first"
        )
    missing = [name for name in names if name not in existing]
    # Reused queues keep their type, so a "quorum" re-run over classic queues still needs the policy.
    if any(wanted[n] == "classic" for n in missing) or any(
        q.get("type") == "classic" for q in existing.values()
    ):
        _put_ha_policy(endpoint.client, vhost, prefix)
    if existing:
        progress(f"reusing {len(existing)} existing queue(s) in vhost {vhost!r}")
    if missing:
        progress(f"declaring {len(missing)} queue(s) on {endpoint.leader_node}")
        declare_queues(endpoint, vhost, {name: wanted[name] for name in missing})

    published = 0
    if messages:
        progress(f"publishing {messages} persistent message(s) to each of {queues} queue(s) with confirms")
        published = publish_confirmed(endpoint, vhost, names, messages, message_bytes, deadline)

    types = {
        q["name"]: q.get("type", "classic") for q in queues_now(endpoint.client, vhost) if q["name"] in wanted
    }
    classic_names = [n for n in names if types.get(n) == "classic"]
    transferred = put_leaders_on_node(endpoint, vhost, names, deadline, progress)
    if classic_names:
        await_mirrors_synchronised(endpoint, vhost, classic_names, deadline, progress)

    final = {q["name"]: q for q in queues_now(endpoint.client, vhost) if q["name"] in wanted}
    leaders = Counter(leader_of(final[n]) for n in names if n in final)
    return SeedSummary(
        vhost=vhost,
        queue_names=tuple(names),
        created=len(missing),
        reused=len(existing),
        classic=len(classic_names),
        quorum=sum(1 for n in names if types.get(n) == "quorum"),
        messages_per_queue=messages,
        messages_published=published,
        leader_node=endpoint.leader_node,
        leaders_per_node=dict(sorted(leaders.items())),
        transferred=transferred,
        seconds=time.monotonic() - started,
    )


def seed_unmirrored(
    target: LocalCluster | SeedTarget,
    *,
    queues: int,
    with_messages: int = 0,
    messages: int = 10,
    vhost: str = "/",
    prefix: str = "fixed",
    on_node: int = 1,
    timeout: float = 300.0,
    progress: Progress = lambda _: None,
) -> SeedSummary:
    """Declare ``queues`` classic queues ``<prefix>.<n>`` that no HA policy matches, on node ``on_node``.

    The first ``with_messages`` of them get ``messages`` persistent messages each; the rest stay empty.
    Fixed load for benchmarks: the balancer may move the empty ones and must skip the others. Fails if a
    policy with ha-mode matches the prefix, since the queues would then not be "unmirrored".
    """
    if queues < 1 or not 0 <= with_messages <= queues:
        raise SeedError(f"need queues >= 1 and 0 <= with_messages <= queues (got {queues}, {with_messages})")
    check_prefix(prefix)
    started = time.monotonic()
    deadline = started + timeout
    endpoint = resolve_target(target, on_node)
    _ensure_vhost(endpoint, vhost, deadline, progress)
    width = max(3, len(str(queues)))
    names = [f"{prefix}.{n:0{width}d}" for n in range(1, queues + 1)]
    for policy in endpoint.client.policies(vhost):
        if "ha-mode" in policy.get("definition", {}) and any(re.search(policy["pattern"], n) for n in names):
            raise SeedError(
                f"HA policy {policy['name']!r} (pattern {policy['pattern']!r}) in vhost {vhost!r} matches "
                f"{prefix}.*; choose a prefix it does not match"
            )
    existing = {q["name"] for q in queues_now(endpoint.client, vhost)}
    missing: dict[str, Literal["classic", "quorum"]] = {n: "classic" for n in names if n not in existing}
    if missing:
        progress(f"declaring {len(missing)} unmirrored classic queue(s) on {endpoint.leader_node}")
        declare_queues(endpoint, vhost, missing)
    published = 0
    if with_messages and messages:
        published = publish_confirmed(endpoint, vhost, names[:with_messages], messages, 64, deadline)
    final = {q["name"]: q for q in queues_now(endpoint.client, vhost) if q["name"] in set(names)}
    leaders = Counter(leader_of(q) for q in final.values())
    return SeedSummary(
        vhost=vhost,
        queue_names=tuple(names),
        created=len(missing),
        reused=queues - len(missing),
        classic=queues,
        quorum=0,
        messages_per_queue=messages if with_messages else 0,
        messages_published=published,
        leader_node=endpoint.leader_node,
        leaders_per_node=dict(sorted(leaders.items())),
        seconds=time.monotonic() - started,
    )


# ---- management API steps ------------------------------------------------------------------------


def _ensure_vhost(endpoint: SeedEndpoint, vhost: str, deadline: float, progress: Progress) -> None:
    """Create the vhost if missing, grant our user everything, and wait until it runs on every node."""
    client = endpoint.client
    try:
        client.get(f"vhosts/{encode(vhost)}")
    except NotFound:
        progress(f"creating vhost {vhost!r}")
        client.request("PUT", f"vhosts/{encode(vhost)}", body={})
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    client.request("PUT", f"permissions/{encode(vhost)}/{encode(endpoint.user)}", body=everything)
    while True:
        info = client.get(f"vhosts/{encode(vhost)}")
        states = info.get("cluster_state") or {}
        if states and all(state == "running" for state in states.values()):
            return
        if time.monotonic() > deadline:
            raise SeedError(f"vhost {vhost!r} did not start on every node in time (states: {states})")
        time.sleep(0.2)


def _put_ha_policy(client: ManagementClient, vhost: str, prefix: str) -> None:
    """``<prefix>-ha``: mirror every ``<prefix>.*`` queue on all nodes, synchronising automatically.

    Created before the queues, so mirrors exist from the first message and stay in sync as they fill.
    One policy per prefix, so seeding two prefixes into one vhost does not unmirror the first.
    """
    client.put_policy(
        vhost,
        f"{prefix}-ha",
        pattern=f"^{re.escape(prefix)}\\.",
        definition={"ha-mode": "all", "ha-sync-mode": "automatic"},
        priority=0,
        apply_to="queues",
    )


def delete_seeded(target: LocalCluster | SeedTarget, *, vhost: str = "/", prefix: str = "seed") -> int:
    """Delete the queues ``<prefix>.*`` and the ``<prefix>-ha`` policy of a vhost; returns queues deleted."""
    endpoint = resolve_target(target, 1)
    pattern = re.compile(f"^{re.escape(prefix)}\\.")
    deleted = 0
    for queue in queues_now(endpoint.client, vhost):
        if pattern.match(queue["name"]):
            try:
                endpoint.client.request("DELETE", f"queues/{encode(vhost)}/{encode(queue['name'])}")
                deleted += 1
            except NotFound:
                pass
    try:
        endpoint.client.delete_policy(vhost, f"{prefix}-ha")
    except ManagementError as exc:
        raise SeedError(f"could not delete policy {prefix}-ha in vhost {vhost!r}: {exc}") from exc
    return deleted
