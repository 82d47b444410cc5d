"""An in-memory ``ManagementApi`` that mirrors classic queues by RabbitMQ 3.10's own rules.

Read from rabbit_mirror_queue_misc / rabbit_mirror_queue_mode_nodes (v3.10.8): a policy change adds the
mirrors the policy wants (appended: mirrors are kept oldest first) and then drops the ones it no longer
wants; a dropped master promotes the *oldest* surviving mirror, synchronised or not; with no
synchronised mirror, ``ha-mode: nodes`` keeps the current master even when the policy leaves it out.
New mirrors synchronise on the next read when ``sync_on_read`` is on (an automatic sync); otherwise only
on a ``sync`` action. ``fewest_copies`` records, per queue, the fewest synchronised copies it ever held
after a change, and ``lost`` the queues whose messages went with an unsynchronised promotion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from queue_balancer.errors import ManagementError, NotFound
from queue_balancer.member_changes import MemberState
from queue_balancer.model import Move, QueueCount, QueueRef, Snapshot
from queue_balancer.movers.policies import pcre_matches

Key = tuple[str, str]


@dataclass
class FakeQueue:
    vhost: str
    name: str
    leader: str
    mirrors: list[str] = field(default_factory=list)
    """Oldest first, as RabbitMQ keeps them."""
    synced: set[str] = field(default_factory=set)
    messages: int = 0
    kind: str = "classic"
    consumers: int = 0

    @property
    def copies(self) -> int:
        return 1 + len(self.synced & set(self.mirrors))


WRITES = frozenset({"put_policy", "delete_policy", "queue_action"})


class FakeCluster:
    """The management API of a cluster of ``nodes`` (all running), with policies applied at once."""

    def __init__(self, nodes: tuple[str, ...] = ("a", "b", "c")) -> None:
        self.running = dict.fromkeys(nodes, True)
        self.queues: dict[Key, FakeQueue] = {}
        self.policy_store: dict[Key, dict[str, Any]] = {}
        self.global_parameters: dict[str, Any] = {}
        self.sync_on_read = True
        self.defer_policies = False
        """Policy changes stored but not applied until ``apply_policies`` (RabbitMQ applies them later)."""
        self.calls: list[tuple[str, ...]] = []
        self.fewest_copies: dict[Key, int] = {}
        self.lost: set[Key] = set()
        self.failures: dict[str, list[Exception]] = {}
        self.publish_rate = 0.0
        """The cluster-wide publish rate ``overview`` reports (the traffic gate's input)."""
        self.guard: Callable[[], None] | None = None
        """Asked before every write, as ``ManagementClient`` asks it (a run's lock: raises once lost)."""

    # ---- set-up -------------------------------------------------------------------------------------

    def add_queue(self, queue: FakeQueue) -> FakeQueue:
        self.queues[(queue.vhost, queue.name)] = queue
        if queue.kind == "classic":  # policies mirror classic queues only
            self._apply(queue)
        self.fewest_copies[(queue.vhost, queue.name)] = queue.copies
        return queue

    def add_policy(
        self, vhost: str, name: str, pattern: str, definition: Mapping[str, Any], priority: int = 0
    ) -> None:
        self.put_policy(vhost, name, pattern=pattern, definition=definition, priority=priority)

    def fail_next(self, method: str, *errors: Exception) -> None:
        self.failures.setdefault(method, []).extend(errors)

    def _call(self, method: str, *args: str) -> None:
        if method in WRITES and self.guard is not None:
            self.guard()
        self.calls.append((method, *args))
        pending = self.failures.get(method)
        if pending:
            raise pending.pop(0)

    # ---- ManagementApi ------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        self._call("overview")
        return {
            "rabbitmq_version": "3.10.8",
            "message_stats": {
                "publish_details": {"rate": self.publish_rate},
                "deliver_get_details": {"rate": 0.0},
            },
        }

    def snapshot(self) -> Snapshot:
        """Nodes and queues as ``ManagementClient.snapshot`` gives them (no lag here: nothing to re-read)."""
        return Snapshot.from_api(self.nodes(), [self._view(q) for q in self.queues.values()], self.overview())

    def members_snapshot(self) -> Snapshot:
        """The members plan's snapshot: the same as ``snapshot`` here (quorum queues never lag)."""
        return self.snapshot()

    def nodes(self) -> list[dict[str, Any]]:
        self._call("nodes")
        return [{"name": n, "running": up} for n, up in self.running.items()]

    def queue(self, vhost: str, name: str) -> dict[str, Any]:
        self._call("queue", vhost, name)
        queue = self._queue(vhost, name)
        return {**self._view(queue), "messages": queue.messages, "consumers": queue.consumers}

    def queue_now(self, vhost: str, name: str) -> dict[str, Any]:
        self._call("queue_now", vhost, name)
        queue = self._queue(vhost, name)
        if self.sync_on_read and self._effective(queue).get("ha-sync-mode") == "automatic":
            queue.synced |= set(queue.mirrors)
        return self._view(queue)

    def queues_now(self, vhost: str | None = None) -> list[dict[str, Any]]:
        self._call("queues_now", vhost or "")
        return [self._view(q) for q in self.queues.values() if vhost is None or q.vhost == vhost]

    def queue_action(self, vhost: str, name: str, action: str) -> None:
        self._call("queue_action", vhost, name, action)
        queue = self._queue(vhost, name)
        if action == "sync":
            queue.synced |= set(queue.mirrors)

    def policies(self, vhost: str | None = None) -> list[dict[str, Any]]:
        self._call("policies", vhost or "")
        return [dict(p) for (v, _), p in self.policy_store.items() if vhost is None or v == vhost]

    def policy(self, vhost: str, name: str) -> dict[str, Any]:
        self._call("policy", vhost, name)
        try:
            return dict(self.policy_store[(vhost, name)])
        except KeyError:
            raise NotFound(f"not found: policy {name}", status=404) from None

    def put_policy(
        self,
        vhost: str,
        name: str,
        *,
        pattern: str,
        definition: Mapping[str, Any],
        priority: int,
        apply_to: str = "queues",
    ) -> None:
        self._call("put_policy", vhost, name)
        if definition.get("ha-mode") == "nodes" and not definition.get("ha-params"):
            raise ManagementError("ha-params must be a non-empty list", status=400)
        self.policy_store[(vhost, name)] = {
            "vhost": vhost,
            "name": name,
            "pattern": pattern,
            "definition": dict(definition),
            "priority": priority,
            "apply-to": apply_to,
        }
        if not self.defer_policies:
            self._apply_all(vhost)

    def delete_policy(self, vhost: str, name: str) -> bool:
        self._call("delete_policy", vhost, name)
        existed = self.policy_store.pop((vhost, name), None) is not None
        if not self.defer_policies:
            self._apply_all(vhost)
        return existed

    def apply_policies(self) -> None:
        """The queues take the policies in force now (after ``defer_policies``)."""
        for vhost in {q.vhost for q in self.queues.values()}:
            self._apply_all(vhost)

    def global_parameter(self, name: str) -> dict[str, Any]:
        if name not in self.global_parameters:
            raise NotFound(f"global parameter {name} not found", status=404)
        return {"name": name, "value": self.global_parameters[name]}

    def put_global_parameter(
        self, name: str, value: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        if self.guard is not None:
            self.guard()
        self.global_parameters[name] = dict(value)

    def delete_global_parameter(self, name: str) -> bool:
        if self.guard is not None:
            self.guard()
        return self.global_parameters.pop(name, None) is not None

    # ---- RabbitMQ's mirroring rules -----------------------------------------------------------------

    def _queue(self, vhost: str, name: str) -> FakeQueue:
        try:
            return self.queues[(vhost, name)]
        except KeyError:
            raise NotFound(f"not found: queue {name}", status=404) from None

    def _view(self, queue: FakeQueue) -> dict[str, Any]:
        policy = self._policy_of(queue)
        common = {
            "vhost": queue.vhost,
            "name": queue.name,
            "type": queue.kind,
            "policy": policy and policy["name"],
        }
        if queue.kind == "quorum":
            members = [queue.leader, *queue.mirrors]
            online = [n for n in members if self.running.get(n, True)]
            return {**common, "leader": queue.leader, "members": members, "online": online}
        return {
            **common,
            "node": queue.leader,
            "slave_nodes": list(queue.mirrors),
            "synchronised_slave_nodes": [m for m in queue.mirrors if m in queue.synced],
        }

    def _policy_of(self, queue: FakeQueue) -> dict[str, Any] | None:
        matching = [
            p
            for (v, _), p in self.policy_store.items()
            if v == queue.vhost and pcre_matches(p["pattern"], queue.name)
        ]
        return max(matching, key=lambda p: p["priority"], default=None)

    def _effective(self, queue: FakeQueue) -> dict[str, Any]:
        policy = self._policy_of(queue)
        return dict(policy["definition"]) if policy else {}

    def _apply_all(self, vhost: str) -> None:
        for queue in self.queues.values():
            if queue.vhost == vhost and queue.kind == "classic":
                self._apply(queue)

    def _apply(self, queue: FakeQueue) -> None:
        """update_mirrors: add what the policy wants, then drop what it no longer wants."""
        master, wanted = self._suggested(queue)
        for node in wanted:
            if node not in queue.mirrors and node != queue.leader:
                queue.mirrors.append(node)
                if not queue.messages:
                    queue.synced.add(node)  # an empty mirror is synchronised at once
        for node in [queue.leader, *queue.mirrors]:
            if node != master and node not in wanted:
                self._drop(queue, node)
        key = (queue.vhost, queue.name)
        self.fewest_copies[key] = min(self.fewest_copies.get(key, queue.copies), queue.copies)

    def _suggested(self, queue: FakeQueue) -> tuple[str, list[str]]:
        """rabbit_mirror_queue_mode_{all,exactly,nodes}:suggested_queue_nodes, running nodes only."""
        definition = self._effective(queue)
        running = [n for n, up in self.running.items() if up]
        mode, params = definition.get("ha-mode"), definition.get("ha-params")
        if mode == "all":
            return queue.leader, [n for n in running if n != queue.leader]
        if mode == "exactly" and isinstance(params, int):
            keep = [m for m in queue.mirrors if m in running][: params - 1]
            spare = [n for n in running if n != queue.leader and n not in keep]
            return queue.leader, keep + spare[: max(params - 1 - len(keep), 0)]
        if mode != "nodes":
            return queue.leader, []
        synced = [m for m in queue.mirrors if m in queue.synced]
        nodes = [str(n) for n in params or ()]
        if not synced and queue.leader not in nodes:
            nodes = sorted({queue.leader, *nodes})
        available = [n for n in nodes if n in running]
        if not available:
            return queue.leader, []
        if queue.leader in available:
            return queue.leader, [n for n in available if n != queue.leader]
        new_master = next((n for n in available if n in synced), synced[0])
        return new_master, [n for n in available if n != new_master]

    def _drop(self, queue: FakeQueue, node: str) -> None:
        if node != queue.leader:
            queue.mirrors.remove(node)
            queue.synced.discard(node)
            return
        if not queue.mirrors:
            return  # cannot_drop_only_mirror
        promoted = queue.mirrors.pop(0)  # the oldest surviving mirror, synchronised or not
        if promoted not in queue.synced:
            self.lost.add((queue.vhost, queue.name))
            queue.messages = 0  # an idle queue's unsynchronised mirror holds none of its messages
        queue.synced.discard(promoted)
        queue.leader = promoted

    def kill(self, node: str) -> None:
        """A node stops: its mirrors go, a master on it promotes the oldest mirror."""
        self.running[node] = False
        for queue in self.queues.values():
            if queue.kind == "classic" and node in (queue.leader, *queue.mirrors):
                self._drop(queue, node)
                key = (queue.vhost, queue.name)
                self.fewest_copies[key] = min(self.fewest_copies[key], queue.copies)


@dataclass
class Counter:
    """Exact counts straight from the fake queues (what a passive declare answers)."""

    cluster: FakeCluster

    def message_counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, QueueCount | None]:
        result: dict[QueueRef, QueueCount | None] = {}
        for ref in refs:
            queue = self.cluster.queues.get((ref.vhost, ref.name))
            result[ref] = QueueCount(queue.messages, queue.consumers) if queue else None
        return result

    def close(self) -> None:
        """Nothing to close: no AMQP connection here."""


@dataclass
class Transfer:
    """Ra's leader transfer: answers ``answer`` and, when it is ``ok``, moves the leader."""

    cluster: FakeCluster
    answer: str = "ok"

    def transfer(self, moves: Sequence[Move]) -> dict[QueueRef, str]:
        for move in moves:
            queue = self.cluster.queues[(move.vhost, move.queue)]
            if self.answer == "ok":
                queue.mirrors = [n for n in (queue.leader, *queue.mirrors) if n != move.target]
                queue.leader = move.target
        return {m.ref: self.answer for m in moves}


@dataclass
class Members:
    """Quorum member changes (``MemberChanger``) on the fake's quorum queues: a new member is caught up at
    once (its log at the leader's commit index), as a small queue's is within one poll."""

    cluster: FakeCluster
    commit: int = 10
    lagging: set[str] = field(default_factory=set)
    """Nodes whose new members never catch up (a large queue's log still being copied)."""
    on_add: Callable[[], None] = lambda: None
    """Called after every add call (a test's way to act mid-change)."""

    def add(self, changes: Sequence[tuple[QueueRef, str]]) -> dict[tuple[QueueRef, str], str]:
        for ref, node in changes:
            queue = self.cluster.queues[(ref.vhost, ref.name)]
            if node != queue.leader and node not in queue.mirrors:
                queue.mirrors.append(node)
        self.on_add()
        return {change: "ok" for change in changes}

    def remove(self, changes: Sequence[tuple[QueueRef, str]]) -> dict[tuple[QueueRef, str], str]:
        for ref, node in changes:
            queue = self.cluster.queues[(ref.vhost, ref.name)]
            if node == queue.leader:
                queue.leader = queue.mirrors.pop(0)
            elif node in queue.mirrors:
                queue.mirrors.remove(node)
        return {change: "ok" for change in changes}

    def status(self, refs: Sequence[QueueRef]) -> dict[QueueRef, list[MemberState] | str]:
        result: dict[QueueRef, list[MemberState] | str] = {}
        for ref in refs:
            queue = self.cluster.queues[(ref.vhost, ref.name)]
            result[ref] = [
                MemberState(
                    node,
                    "leader" if node == queue.leader else "follower",
                    self.commit,
                    0 if node in self.lagging else self.commit,
                )
                for node in (queue.leader, *queue.mirrors)
            ]
        return result
