"""How the bench reads the cluster: the same observer, the same rules, for both tools.

Why so careful: the management API's default (statistics) view lags the queues by up to one statistics
interval (5 s by default) - right after a leader change it may still show the old node, a new master among
its own mirrors, or no message count at all. Counting messages from it too early would invent losses (or
hide them). So every count here comes from a *settled* view: the statistics agree with the real-time view
(``?disable_stats=true``: leader and mirrors straight from the queue processes) for every queue, the
queue's own policy is back in the statistics, and that agreement holds on two consecutive polls. Real
counts are cross-checked over AMQP (a passive declare returns the queue process's own count; a drain
counts what a consumer really gets). Every wait is on an observed condition with a deadline; no sleeps
stand in for knowledge.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pika

from queue_balancer.errors import NotFound
from queue_balancer.local.cluster import LocalNode
from queue_balancer.management import ManagementClient, encode
from queue_balancer.model import Queue, QueueRef, QueueType, spread
from queue_balancer.movers import POLICY_PREFIX

Clock = Callable[[], float]
POLL_INTERVAL = 0.2
STATISTICS_INTERVAL = 5.0  # RabbitMQ's collect_statistics_interval default (the local cluster keeps it)
# Suffixes of the problems ``settle`` stops waiting for after ``replication_grace`` (see there).
_REPLICATION = " replicas in sync"
_POLICY = " (policy not back)"


class BenchError(Exception):
    """The bench could not prepare or observe a run; the message says which step and what it saw."""


@dataclass(frozen=True)
class QueueState:
    """One queue in a settled view: where it really is (real time) and what the statistics count."""

    ref: QueueRef
    type: QueueType
    leader: str
    in_sync: int
    messages: int
    policy: str | None


@dataclass(frozen=True)
class Settled:
    """A view of the whole cluster in which the statistics have caught up with the queues."""

    nodes: tuple[str, ...]
    queues: Mapping[QueueRef, QueueState]
    waited: float
    """Seconds the statistics took to catch up (not part of any tool's time)."""
    restored_after: float | None = None
    """Seconds from ``since`` until the real-time view first showed every queue fully replicated again."""
    complete: bool = True
    """False when the deadline passed first; ``problem`` then says what still disagreed."""
    problem: str = ""

    @property
    def leaders(self) -> dict[str, int]:
        """Leaders per running node, nodes without leaders included."""
        counts = Counter({n: 0 for n in self.nodes})
        counts.update(q.leader for q in self.queues.values() if q.leader in counts)
        return dict(counts)

    @property
    def spread(self) -> int:
        return spread(self.leaders)

    @property
    def spread_by_type(self) -> dict[str, int]:
        """Spread of each queue type's leaders over the running nodes (a node leading every quorum queue
        is hot even when the totals are even)."""
        result = {}
        for queue_type in sorted({q.type.value for q in self.queues.values()}):
            counts = Counter({n: 0 for n in self.nodes})
            counts.update(
                q.leader for q in self.queues.values() if q.type.value == queue_type and q.leader in counts
            )
            result[queue_type] = spread(dict(counts))
        return result

    @property
    def messages(self) -> int:
        return sum(q.messages for q in self.queues.values())


@dataclass
class _Agreement:
    """What one poll found: the problems (empty when settled) and the per-queue states."""

    problems: list[str] = field(default_factory=list)
    replicated: bool = True
    states: dict[QueueRef, QueueState] = field(default_factory=dict)


def management(node: LocalNode, credentials: tuple[str, str]) -> ManagementClient:
    """The bench's own client of one node's management API (the tools use their own)."""
    return ManagementClient(node.management_url, *credentials, timeout=30)


def queues_now(client: ManagementClient) -> dict[QueueRef, Queue]:
    """Every queue as its process sees it right now: leader, mirrors or members, sync state."""
    return {q.ref: q for q in map(Queue.from_api, client.get("queues", disable_stats="true"))}


def running_nodes(client: ManagementClient) -> tuple[str, ...]:
    return tuple(sorted(str(n["name"]) for n in client.nodes() if n.get("running")))


def temporary_policies(client: ManagementClient) -> list[str]:
    """Policies the balancer creates during a move (``queue-balancer-*``); any left after a run is a bug."""
    return sorted(
        f"{p['vhost']}/{p['name']}" for p in client.policies() if str(p["name"]).startswith(POLICY_PREFIX)
    )


def reset(client: ManagementClient, *, timeout: float = 120.0, clock: Clock = time.monotonic) -> int:
    """Delete every queue, every policy and every vhost but "/"; return once no queue is left.

    Each run starts from this empty state and a fresh seed, so no run inherits the placement, the
    mirrors or the message store of the one before.
    """
    deadline = clock() + timeout
    deleted = 0
    for ref in queues_now(client):
        try:
            client.request("DELETE", f"queues/{encode(ref.vhost)}/{encode(ref.name)}")
            deleted += 1
        except NotFound:
            pass
    for policy in client.policies():
        client.delete_policy(str(policy["vhost"]), str(policy["name"]))
    for vhost in client.vhosts():
        if vhost != "/":
            with contextlib.suppress(NotFound):
                client.request("DELETE", f"vhosts/{encode(vhost)}")
    while queues_now(client) or client.policies():
        if clock() > deadline:
            raise BenchError(f"queues or policies still listed {timeout:.0f} s after deleting them all")
        time.sleep(POLL_INTERVAL)
    return deleted


def own_policy(queue: Queue, policies: Iterable[Mapping[str, Any]]) -> str | None:
    """The policy RabbitMQ applies to a classic queue by itself: highest priority among the matching ones.

    Only used before a run, to know that the statistics already show the seeded HA policy. (Quorum
    queues are not checked: 3.10 shows no policy for them when every key of the policy is ``ha-*``.)
    """
    matching = [
        p
        for p in policies
        if not str(p["name"]).startswith(POLICY_PREFIX)
        and p.get("vhost") == queue.vhost
        and p.get("apply-to", "all") in ("all", "queues", "classic_queues")
        and re.search(str(p["pattern"]), queue.name)
    ]
    if not matching:
        return None
    return str(max(matching, key=lambda p: int(p.get("priority", 0)))["name"])


def settle(
    client: ManagementClient,
    *,
    timeout: float,
    since: float | None = None,
    reference: Settled | None = None,
    expected_messages: int | None = None,
    replication_grace: float = 60.0,
    stable_for: float = STATISTICS_INTERVAL + 1.0,
    clock: Clock = time.monotonic,
) -> Settled:
    """Wait until the statistics view agrees with the real-time view for every queue, and keeps agreeing
    with unchanged counts for ``stable_for`` seconds - longer than one statistics refresh, because right
    after leader changes the statistics can agree on leaders and mirrors yet briefly show quorum queues
    with 0 messages or classic ones doubled (seen here for a few seconds after a run).

    Before a run (``reference`` None): classic queues must show their HA policy in the statistics, every
    mirror must be in sync, and the statistics must count ``expected_messages`` in all. After a run
    (``reference`` = the settled view before it): the same queues, each with its policy from before and
    at least as many synchronised replicas as before. ``since`` (a ``clock()`` value, e.g. when the tool
    started) makes the result carry when the real-time view first showed full replication again.

    After a run, missing replicas and a policy that is not back are waited for only
    ``replication_grace`` seconds: RabbitMQ 3.10 can leave a classic queue under-replicated for good
    after a leader change (the queue process misses a policy change during its promotion and keeps
    applying a policy that no longer exists - the statistics then rightly show that policy), and the
    message count does not depend on it. Such a run is reported as never fully replicated. On timeout
    the last view is returned with ``complete=False`` instead of raising, so a tool that leaves the
    cluster unsettled is reported, not hidden.
    """
    started = clock()
    deadline = started + timeout
    grace_until = started + replication_grace
    agreed_since: float | None = None
    agreed_counts: dict[QueueRef, int] = {}
    restored_at: float | None = None
    while True:
        nodes = running_nodes(client)
        found = _compare(client, nodes, reference, expected_messages)
        now = clock()
        if restored_at is None and found.replicated:
            restored_at = now
        problems = found.problems
        if reference is not None and now > grace_until:
            problems = [p for p in problems if not p.endswith((_REPLICATION, _POLICY))]
        counts = {ref: state.messages for ref, state in found.states.items()}
        if not problems and agreed_since is not None and counts == agreed_counts:
            if now - agreed_since >= stable_for:
                return _settled(nodes, found, now - started, since, restored_at)
        elif not problems:
            agreed_since, agreed_counts = now, counts  # (re)start the quiet window
        else:
            agreed_since = None
            if now > deadline:
                problem = f"{len(problems)} disagreement(s), e.g. {problems[0]}"
                return _settled(nodes, found, now - started, since, restored_at, problem)
        time.sleep(POLL_INTERVAL)


def _settled(
    nodes: tuple[str, ...],
    found: _Agreement,
    waited: float,
    since: float | None,
    restored_at: float | None,
    problem: str = "",
) -> Settled:
    restored = None if since is None or restored_at is None else restored_at - since
    return Settled(nodes, dict(found.states), waited, restored, not problem, problem)


def _compare(
    client: ManagementClient,
    nodes: tuple[str, ...],
    reference: Settled | None,
    expected_messages: int | None,
) -> _Agreement:
    """One poll of both views (real time first, so the statistics can only be newer than it)."""
    live = queues_now(client)
    raw_stats = {QueueRef(str(q["vhost"]), str(q["name"])): q for q in client.queues()}
    policies = client.policies()
    stranded = _stranded(live, policies) if reference is not None else {}
    found = _Agreement()
    expected_refs = set(reference.queues) if reference is not None else set(live)
    if set(live) != expected_refs:
        found.problems.append(f"queues changed: {len(live)} listed, {len(expected_refs)} expected")
    if set(raw_stats) != set(live):
        found.problems.append("the statistics list other queues than the real-time view")
    for ref, now in live.items():
        raw = raw_stats.get(ref)
        if raw is not None:
            before = reference.queues.get(ref) if reference is not None else None
            _compare_queue(found, now, raw, before, policies, stranded.get(ref))
    if expected_messages is not None and not found.problems:
        total = sum(s.messages for s in found.states.values())
        if total != expected_messages:
            found.problems.append(f"the statistics count {total} messages, {expected_messages} were seeded")
    for state in found.states.values():
        if state.leader not in nodes:
            found.problems.append(f"{state.ref}: leader {state.leader} is not a running node")
    return found


def _compare_queue(
    found: _Agreement,
    now: Queue,
    raw: Mapping[str, Any],
    before: QueueState | None,
    policies: Iterable[Mapping[str, Any]],
    stranded_by: str | None,
) -> None:
    """Compare one queue's real-time state with its statistics (and with its state before the run).

    ``stranded_by``: a temporary policy the tool left on this queue. Nothing will remove it, so its
    policy and mirrors cannot come back; the queue then only has to agree on leader and mirrors (which
    keeps its count trustworthy) and the run is reported as never fully replicated.
    """
    ref = now.ref
    stats = Queue.from_api(raw)
    wanted_sync = before.in_sync if before is not None else len(now.replicas)
    if len(now.in_sync) < wanted_sync or not set(now.replicas) <= set(now.in_sync):
        found.replicated = False
        if stranded_by is None:
            found.problems.append(f"{ref}: {len(now.in_sync)} of {wanted_sync}{_REPLICATION}")
    if raw.get("messages") is None:
        found.problems.append(f"{ref}: no message count in the statistics yet")
    if stats.leader != now.leader or set(stats.replicas) != set(now.replicas):
        found.problems.append(f"{ref}: statistics show {stats.leader}, the queue is on {now.leader}")
    wanted_policy: str | None
    if stranded_by is not None:
        wanted_policy = stranded_by
    elif before is not None:
        wanted_policy = before.policy
    elif now.type is QueueType.CLASSIC:
        wanted_policy = own_policy(now, policies)
    else:
        wanted_policy = stats.policy
    if stats.policy != wanted_policy:
        found.problems.append(
            f"{ref}: statistics show policy {stats.policy}, expected {wanted_policy}{_POLICY}"
        )
    found.states[ref] = QueueState(ref, now.type, now.leader, len(now.in_sync), stats.messages, stats.policy)


def _stranded(live: Mapping[QueueRef, Queue], policies: Iterable[Mapping[str, Any]]) -> dict[QueueRef, str]:
    """Queues governed by a leftover ``queue-balancer-*`` policy (the highest-priority match wins)."""
    temporary = [p for p in policies if str(p["name"]).startswith(POLICY_PREFIX)]
    result: dict[QueueRef, str] = {}
    for ref in live:
        matching = [
            p for p in temporary if p.get("vhost") == ref.vhost and re.search(str(p["pattern"]), ref.name)
        ]
        if matching:
            result[ref] = str(max(matching, key=lambda p: int(p.get("priority", 0)))["name"])
    return result


# ---- AMQP cross-checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AmqpCheck:
    """Exact counts from the queue processes themselves, to cross-check the statistics view."""

    total: int
    """Sum over all queues of the passive-declare message count (no consumers: ready == all)."""
    drained_queue: str
    drained: int
    """Messages a consumer actually received from ``drained_queue`` until it was empty."""
    drained_expected: int
    """What the settled statistics said that queue held."""

    @property
    def agrees(self) -> bool:
        return self.drained == self.drained_expected


def _parameters(node: LocalNode, credentials: tuple[str, str], vhost: str) -> Any:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=node.amqp_port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(*credentials),
        blocked_connection_timeout=60,
        connection_attempts=3,
        retry_delay=1,
    )


def amqp_check(
    node: LocalNode, credentials: tuple[str, str], settled: Settled, drain: QueueRef | None
) -> AmqpCheck:
    """Passive-declare every queue (exact counts), then drain ``drain`` and count what arrives.

    Destructive for the drained queue: call it only after everything else about the run is measured.
    """
    total = 0
    by_vhost: dict[str, list[QueueRef]] = {}
    for ref in settled.queues:
        by_vhost.setdefault(ref.vhost, []).append(ref)
    for vhost, refs in by_vhost.items():
        connection = pika.BlockingConnection(_parameters(node, credentials, vhost))
        try:
            channel = connection.channel()
            for ref in refs:
                total += channel.queue_declare(ref.name, passive=True).method.message_count
        finally:
            connection.close()
    if drain is None:
        return AmqpCheck(total, "", 0, 0)
    expected = settled.queues[drain].messages
    return AmqpCheck(total, drain.name, _drain(node, credentials, drain), expected)


def _drain(node: LocalNode, credentials: tuple[str, str], ref: QueueRef) -> int:
    """Consume until the queue's own count says it is empty; return how many messages arrived.

    Every delivery is acknowledged as it arrives, so anything prefetched beyond the passive count goes
    back to the queue on cancel and is counted there: the result is exact either way.
    """
    connection = pika.BlockingConnection(_parameters(node, credentials, ref.vhost))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)
        remaining = channel.queue_declare(ref.name, passive=True).method.message_count
        received = 0
        if remaining:
            # The inactivity timeout is a deadline for a broken broker, not a wait for an expected
            # event: the loop ends as soon as the queue's own count has arrived.
            for method, _properties, _body in channel.consume(ref.name, inactivity_timeout=30):
                if method is None:
                    raise BenchError(f"draining {ref}: nothing arrived for 30 s, {remaining} still expected")
                channel.basic_ack(method.delivery_tag)
                received += 1
                remaining -= 1
                if remaining == 0:
                    break
            channel.cancel()
        left: int = channel.queue_declare(ref.name, passive=True).method.message_count
        return received + left
    finally:
        connection.close()
