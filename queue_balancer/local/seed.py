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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pika

from queue_balancer.errors import BalancerError, ManagementError, NotFound
from queue_balancer.local.cluster import LocalCluster
from queue_balancer.management import ManagementClient, encode

QueueType = Literal["classic", "quorum", "mixed"]
QUEUE_TYPES: tuple[QueueType, ...] = ("classic", "quorum", "mixed")
Progress = Callable[[str], None]

# Unconfirmed messages in flight per connection: enough to keep the queue processes busy (fsync batches)
# without letting a blocked broker pile up an unbounded backlog in the client.
CONFIRM_WINDOW = 1000


class SeedError(BalancerError):
    """The workload could not be created or verified; the message says which queue and what to do."""


@dataclass(frozen=True)
class SeedTarget:
    """Any cluster reachable through its management API (``seed`` also accepts a ``LocalCluster``).

    AMQP goes to the listener the chosen node reports in ``/api/overview``; ``amqp_host`` replaces a
    wildcard listener address (0.0.0.0 / ::) with something this machine can connect to.
    """

    management_url: str
    user: str
    password: str
    amqp_host: str = "127.0.0.1"

    def __repr__(self) -> str:  # never show the password
        return f"SeedTarget({self.management_url!r}, user={self.user!r})"


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


@dataclass(frozen=True)
class _Endpoint:
    """The resolved connection details: management client, node names, and the seeding node's AMQP."""

    client: ManagementClient
    cluster: LocalCluster | None
    node_names: tuple[str, ...]  # index order (1-based index = position + 1)
    leader_node: str
    amqp_host: str
    amqp_port: int
    user: str
    password: str


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
    existing queues are reused as they are (whatever their type) and get ``messages`` more each. Returns
    once every leader is on ``on_node`` (stragglers are transferred, which needs a ``LocalCluster``) and
    every classic mirror is synchronised.
    """
    if queues < 1:
        raise SeedError(f"the number of queues must be at least 1, not {queues}")
    if messages < 0:
        raise SeedError(f"the number of messages per queue must be 0 or more, not {messages}")
    if queue_type not in QUEUE_TYPES:
        raise SeedError(f"queue type must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")
    _check_prefix(prefix)
    started = time.monotonic()
    deadline = started + timeout
    endpoint = _resolve(target, on_node)
    width = max(3, len(str(queues)))
    names = [f"{prefix}.{n:0{width}d}" for n in range(1, queues + 1)]
    classic_count = {"classic": queues, "quorum": 0, "mixed": (queues + 1) // 2}[queue_type]
    wanted: dict[str, Literal["classic", "quorum"]] = {
        name: ("classic" if i < classic_count else "quorum") for i, name in enumerate(names)
    }

    _ensure_vhost(endpoint, vhost, deadline, progress)
    existing = {q["name"]: q for q in _queues_now(endpoint.client, vhost) if q["name"] in wanted}
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
        _declare(endpoint, vhost, {name: wanted[name] for name in missing})

    published = 0
    if messages:
        progress(f"publishing {messages} persistent message(s) to each of {queues} queue(s) with confirms")
        published = _publish(endpoint, vhost, names, messages, message_bytes, deadline)

    types = {
        q["name"]: q.get("type", "classic")
        for q in _queues_now(endpoint.client, vhost)
        if q["name"] in wanted
    }
    classic_names = [n for n in names if types.get(n) == "classic"]
    transferred = _put_leaders_on_node(endpoint, vhost, names, deadline, progress)
    if classic_names:
        _await_mirrors_synchronised(endpoint, vhost, classic_names, deadline, progress)

    final = {q["name"]: q for q in _queues_now(endpoint.client, vhost) if q["name"] in wanted}
    leaders = Counter(_leader(final[n]) for n in names if n in final)
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
    _check_prefix(prefix)
    started = time.monotonic()
    deadline = started + timeout
    endpoint = _resolve(target, on_node)
    _ensure_vhost(endpoint, vhost, deadline, progress)
    width = max(3, len(str(queues)))
    names = [f"{prefix}.{n:0{width}d}" for n in range(1, queues + 1)]
    for policy in endpoint.client.policies(vhost):
        if "ha-mode" in policy.get("definition", {}) and any(re.search(policy["pattern"], n) for n in names):
            raise SeedError(
                f"HA policy {policy['name']!r} (pattern {policy['pattern']!r}) in vhost {vhost!r} matches "
                f"{prefix}.*; choose a prefix it does not match"
            )
    existing = {q["name"] for q in _queues_now(endpoint.client, vhost)}
    missing: dict[str, Literal["classic", "quorum"]] = {n: "classic" for n in names if n not in existing}
    if missing:
        progress(f"declaring {len(missing)} unmirrored classic queue(s) on {endpoint.leader_node}")
        _declare(endpoint, vhost, missing)
    published = 0
    if with_messages and messages:
        published = _publish(endpoint, vhost, names[:with_messages], messages, 64, deadline)
    final = {q["name"]: q for q in _queues_now(endpoint.client, vhost) if q["name"] in set(names)}
    leaders = Counter(_leader(q) for q in final.values())
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


# ---- resolving the target ------------------------------------------------------------------------


def _check_prefix(prefix: str) -> None:
    if not prefix or prefix.startswith("amq.") or any(c in prefix for c in "\r\n\0"):
        raise SeedError(f"invalid queue name prefix {prefix!r} (empty, 'amq.' or control characters)")


def _resolve(target: LocalCluster | SeedTarget, on_node: int) -> _Endpoint:
    if isinstance(target, LocalCluster):
        node = target.node(on_node)
        user, password = target.credentials
        # Management calls go to the seeding node itself: it is the one that must have the vhost running.
        client = ManagementClient(node.management_url, user, password, timeout=30)
        return _Endpoint(
            client=client,
            cluster=target,
            node_names=tuple(n.name for n in target.nodes),
            leader_node=node.name,
            amqp_host="127.0.0.1",
            amqp_port=node.amqp_port,
            user=user,
            password=password,
        )
    client = ManagementClient(target.management_url, target.user, target.password, timeout=30)
    names = tuple(sorted(str(n["name"]) for n in client.nodes()))
    if not 1 <= on_node <= len(names):
        raise SeedError(
            f"there is no node {on_node}: the cluster has nodes 1..{len(names)} ({', '.join(names)})"
        )
    leader = names[on_node - 1]
    host, port = _amqp_listener(client.overview(), leader, target.amqp_host)
    return _Endpoint(client, None, names, leader, host, port, target.user, target.password)


def _amqp_listener(overview: Mapping[str, Any], node: str, fallback_host: str) -> tuple[str, int]:
    for listener in overview.get("listeners", []):
        if listener.get("node") == node and listener.get("protocol") == "amqp":
            ip = str(listener.get("ip_address", ""))
            host = fallback_host if ip in ("", "0.0.0.0", "::") else ip
            return host, int(listener["port"])
    raise SeedError(
        f"{node} has no plain AMQP listener in /api/overview; seed needs one to declare on that node"
    )


# ---- management API steps ------------------------------------------------------------------------


def _ensure_vhost(endpoint: _Endpoint, vhost: str, deadline: float, progress: Progress) -> None:
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


def _queues_now(client: ManagementClient, vhost: str) -> list[dict[str, Any]]:
    """Queues of the vhost as their processes see them now (leader, mirrors, sync); no statistics."""
    result: list[dict[str, Any]] = client.get(f"queues/{encode(vhost)}", disable_stats="true")
    return result


def _leader(queue: Mapping[str, Any]) -> str:
    return str(queue.get("leader") or queue.get("node") or "?")


def _put_leaders_on_node(
    endpoint: _Endpoint, vhost: str, names: Sequence[str], deadline: float, progress: Progress
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
        current = {q["name"]: q for q in _queues_now(endpoint.client, vhost) if q["name"] in wanted}
        absent = sorted(wanted - current.keys())
        if absent:
            raise SeedError(f"queue(s) vanished while seeding vhost {vhost!r}: {', '.join(absent[:5])}")
        stragglers = {n: q for n, q in current.items() if _leader(q) != target}
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
            detail = ", ".join(f"{n} on {_leader(q)}" for n, q in list(stragglers.items())[:5])
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


def _await_mirrors_synchronised(
    endpoint: _Endpoint, vhost: str, names: Sequence[str], deadline: float, progress: Progress
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
        for queue in _queues_now(endpoint.client, vhost):
            if queue["name"] not in wanted:
                continue
            expected = running - {_leader(queue)}
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


# ---- AMQP ----------------------------------------------------------------------------------------


def _connection_parameters(endpoint: _Endpoint, vhost: str) -> Any:
    return pika.ConnectionParameters(
        host=endpoint.amqp_host,
        port=endpoint.amqp_port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(endpoint.user, endpoint.password),
        blocked_connection_timeout=60,  # a memory/disk alarm must fail the seed, not hang it
        connection_attempts=3,
        retry_delay=1,
    )


def _declare(endpoint: _Endpoint, vhost: str, queues: Mapping[str, Literal["classic", "quorum"]]) -> None:
    """Declare over AMQP on the seeding node, so client-local locators put every leader there."""
    classic_args = {"x-queue-master-locator": "client-local"}
    quorum_args = {"x-queue-type": "quorum", "x-queue-leader-locator": "client-local"}
    try:
        connection = pika.BlockingConnection(_connection_parameters(endpoint, vhost))
    except pika.exceptions.AMQPError as exc:
        raise SeedError(
            f"cannot open an AMQP connection to {endpoint.leader_node} at "
            f"{endpoint.amqp_host}:{endpoint.amqp_port} (vhost {vhost!r}): {exc!r}"
        ) from exc
    try:
        channel = connection.channel()
        for name, kind in queues.items():
            try:
                channel.queue_declare(
                    name, durable=True, arguments=quorum_args if kind == "quorum" else classic_args
                )
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise SeedError(
                    f"cannot declare queue {name!r} in vhost {vhost!r}: {exc.reply_text}"
                ) from exc
    except pika.exceptions.AMQPError as exc:
        raise SeedError(
            f"the AMQP connection to {endpoint.leader_node} failed while declaring queues: {exc!r}"
        ) from exc
    finally:
        if connection.is_open:
            connection.close()


def _publish(
    endpoint: _Endpoint, vhost: str, names: Sequence[str], per_queue: int, size: int, deadline: float
) -> int:
    """Publish ``per_queue`` persistent messages to each queue; return how many the broker confirmed."""
    publisher = _ConfirmingPublisher(
        _connection_parameters(endpoint, vhost),
        _round_robin(names, per_queue),
        total=len(names) * per_queue,
        size=size,
        timeout=max(1.0, deadline - time.monotonic()),
    )
    confirmed = publisher.run()
    if publisher.error:
        raise SeedError(
            f"publishing to {endpoint.leader_node} ({endpoint.amqp_host}:{endpoint.amqp_port}, vhost {vhost!r}) "
            f"failed after {confirmed} confirmed message(s): {publisher.error}"
        )
    return confirmed


def _round_robin(names: Sequence[str], per_queue: int) -> Iterator[str]:
    # Interleaving queues keeps every queue process (and its mirrors' fsyncs) busy at once.
    for _ in range(per_queue):
        yield from names


class _ConfirmingPublisher:
    """Publishes with a window of unconfirmed messages on pika's asynchronous connection.

    BlockingConnection waits for each confirm (about 1 ms per message to a mirrored queue here); a window
    of outstanding confirms is the same safety (every message acknowledged by the broker after it is
    persisted and replicated) at a fraction of the time.
    """

    def __init__(
        self, parameters: Any, routing_keys: Iterator[str], *, total: int, size: int, timeout: float
    ):
        self._parameters = parameters
        self._keys = routing_keys
        self._total = total
        self._timeout = timeout
        self._outstanding: dict[int, str] = {}
        self._next_tag = 1
        self._exhausted = False
        self._connection: Any = None
        self._channel: Any = None
        self._properties = pika.BasicProperties(delivery_mode=2, content_type="text/plain")
        self._body = (b"queue-balancer seed " * (size // 20 + 1))[:size]
        self.confirmed = 0
        self.error: str | None = None
        self._finished = False  # set before our own close, so the close callbacks are not errors

    def run(self) -> int:
        """Connect, publish everything, wait for the last confirm, close; returns the confirmed count."""
        if self._total == 0:
            return 0
        self._connection = pika.SelectConnection(
            self._parameters,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_connection_closed,
        )
        self._connection.ioloop.call_later(self._timeout, self._on_timeout)
        self._connection.ioloop.start()
        return self.confirmed

    def _fail(self, reason: str) -> None:
        if self.error is None and not self._finished:
            self.error = reason
        if self._connection is not None and not (self._connection.is_closing or self._connection.is_closed):
            self._connection.close()

    def _on_open_error(self, _connection: Any, error: Any) -> None:
        self.error = self.error or f"cannot connect: {error!r}"
        self._connection.ioloop.stop()

    def _on_connection_closed(self, _connection: Any, reason: Any) -> None:
        if not self._finished and self.error is None:
            self.error = f"connection closed: {reason!r}"
        self._connection.ioloop.stop()

    def _on_timeout(self) -> None:
        self._fail(f"timed out after {self._timeout:.0f} s with {len(self._outstanding)} unconfirmed")

    def _on_connection_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(lambda _ch, reason: self._fail(f"channel closed: {reason!r}"))
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: self._publish_more()
        )

    def _on_return(self, _channel: Any, _method: Any, _properties: Any, _body: bytes) -> None:
        # mandatory=True: a returned message means its queue disappeared under us.
        self._fail(f"a message to queue {_method.routing_key!r} was returned as unroutable (queue deleted?)")

    def _publish_more(self) -> None:
        while not self._exhausted and len(self._outstanding) < CONFIRM_WINDOW and self.error is None:
            key = next(self._keys, None)
            if key is None:
                self._exhausted = True
                break
            self._channel.basic_publish("", key, self._body, self._properties, mandatory=True)
            self._outstanding[self._next_tag] = key
            self._next_tag += 1
        if self._exhausted and not self._outstanding and self.error is None:
            self._finished = True
            self._connection.close()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            queue = self._outstanding.get(method.delivery_tag, "?")
            self._fail(f"the broker refused (nack) a message to queue {queue!r}")
            return
        if method.multiple:
            for tag in [t for t in self._outstanding if t <= method.delivery_tag]:
                del self._outstanding[tag]
                self.confirmed += 1
        elif self._outstanding.pop(method.delivery_tag, None) is not None:
            self.confirmed += 1
        self._publish_more()


def delete_seeded(target: LocalCluster | SeedTarget, *, vhost: str = "/", prefix: str = "seed") -> int:
    """Delete the queues ``<prefix>.*`` and the ``<prefix>-ha`` policy of a vhost; returns queues deleted."""
    endpoint = _resolve(target, 1)
    pattern = re.compile(f"^{re.escape(prefix)}\\.")
    deleted = 0
    for queue in _queues_now(endpoint.client, vhost):
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
