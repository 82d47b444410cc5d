"""The temporary policy of a classic move: its name, its exact pattern, its keys, and its removal.

A temporary policy ``queue-balancer-<hash>`` matches exactly one queue, sits above every other policy
of the vhost and carries the queue's own non-HA keys (so TTLs, length limits and dead-lettering stay in
force during the move); only its HA keys differ. ``own_policy`` finds the policy the queue returns to.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

from queue_balancer.errors import ManagementError, NotFound
from queue_balancer.model import Queue, QueueRef, QueueType
from queue_balancer.movers.ports import ManagementApi

POLICY_PREFIX = "queue-balancer-"


RUN_ID = re.compile(r"[0-9a-z]{1,16}")

_log = logging.getLogger(__name__)


def temporary_policy_name(ref: QueueRef, run_id: str = "") -> str:
    """``queue-balancer-<run>-<hash>``: deterministic per run and queue, so a retried start finds (and
    reuses) its own policy, and ``cleanup`` knows which run a policy belongs to."""
    if run_id and not RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id must be 1-16 lowercase letters or digits, got {run_id!r}")
    digest = hashlib.sha256(f"{ref.vhost}\0{ref.name}".encode()).hexdigest()[:16]
    return POLICY_PREFIX + (f"{run_id}-" if run_id else "") + digest


def derived_run_id(name: str) -> str:
    """A policy-safe run id for a run named elsewhere (a workflow run's execution name): stable for
    the run, so its lock and its temporary policies stay its own across retries and continuations."""
    return "w" + hashlib.sha256(name.encode()).hexdigest()[:12]


def is_temporary(name: str) -> bool:
    return name.startswith(POLICY_PREFIX)


def owning_run(name: str) -> str:
    """The run a temporary policy belongs to; "" for a policy of an older version (no run in its name)."""
    rest = name[len(POLICY_PREFIX) :]
    run, _, _digest = rest.rpartition("-")
    return run if RUN_ID.fullmatch(run) else ""


def exact_pattern(name: str) -> str:
    """A regex matching exactly ``name`` (``orders.v2`` must not match ``ordersXv2``).

    Every character that is not a letter or a digit is escaped: PCRE, which RabbitMQ uses (Erlang's
    ``re``), reads an escaped punctuation character as itself; letters and digits are never escaped
    (``\\d`` means a digit). The end is ``\\z``, not ``$``: in PCRE ``$`` also matches before a final
    newline, so ``^q$`` governs a queue named "q\\n" as well (shown on a real node in
    tests/integration/test_lock.py).
    """
    escaped = "".join(c if c.isalnum() or ord(c) > 127 else "\\" + c for c in name)
    return f"^{escaped}\\z"


def pcre_matches(pattern: str, name: str) -> bool:
    """Whether a RabbitMQ policy pattern (PCRE, matched by Erlang's ``re``) matches ``name``, evaluated
    with Python's ``re``: the one PCRE escape our patterns use that Python spells differently is ``\\z``
    (the very end; Python's ``\\Z``)."""
    python = re.sub(r"\\(.)", lambda m: "\\Z" if m.group(1) == "z" else m.group(0), pattern, flags=re.DOTALL)
    return re.search(python, name) is not None


def own_policy(api: ManagementApi, queue: Queue) -> tuple[str, Mapping[str, Any]] | None:
    """The queue's own policy (name, definition), also while a temporary policy hides it."""
    if queue.policy and not is_temporary(queue.policy):
        try:
            return queue.policy, api.policy(queue.vhost, queue.policy).get("definition") or {}
        except NotFound:
            return None
    if not queue.policy and queue.type is not QueueType.CLASSIC:
        # Nothing to return to for mirroring (ha-* keys never apply to a quorum queue); a search could
        # name a policy the statistics view never shows for it.
        return None
    # A retried start finds its temporary policy in effect, or a new queue's statistics do not show its
    # policy yet: find the policy RabbitMQ applies, as RabbitMQ does (matching, highest priority).
    candidates = [
        p
        for p in api.policies(queue.vhost)
        if not is_temporary(str(p["name"]))
        and p.get("apply-to", "all") in ("all", "queues", f"{queue.type.value}_queues")
        and pcre_matches(str(p["pattern"]), queue.name)
    ]
    if not candidates:
        return None
    best = max(candidates, key=lambda p: int(p.get("priority", 0)))
    return str(best["name"]), best.get("definition") or {}


def policy_exists(api: ManagementApi, vhost: str, name: str) -> bool:
    try:
        api.policy(vhost, name)
    except NotFound:
        return False
    return True


def put_temporary_policy(
    api: ManagementApi,
    ref: QueueRef,
    name: str,
    own_definition: Mapping[str, Any],
    ha_definition: Mapping[str, Any],
) -> None:
    """The queue's own non-HA keys plus ``ha_definition``, above every other policy of the vhost,
    temporary ones included: RabbitMQ's choice between two matching policies of equal priority is
    undefined, and a dead run's policy may still match the queue."""
    others = [p for p in api.policies(ref.vhost) if str(p["name"]) != name]
    priority = max((int(p.get("priority", 0)) for p in others), default=0) + 1
    definition = {k: v for k, v in own_definition.items() if not k.startswith("ha-")}
    definition.update(ha_definition)
    api.put_policy(ref.vhost, name, pattern=exact_pattern(ref.name), definition=definition, priority=priority)


def request_sync(api: ManagementApi, vhost: str, queue: str) -> bool:
    """Ask a mirrored queue to synchronise its mirrors; False when the user may not (the sync action needs
    the administrator tag, which a monitoring + policymaker user lacks). The caller keeps waiting on what it
    observes either way: an automatic-sync queue catches up without it, and a deadline bounds the rest."""
    try:
        api.queue_action(vhost, queue, "sync")
    except ManagementError as error:
        if error.status not in (401, 403):
            raise
        _log.warning(
            "cannot start the sync of queue '%s' in vhost '%s' (HTTP %s): the sync action needs a user with "
            "the administrator tag; waiting for the mirrors to catch up by themselves",
            queue,
            vhost,
            error.status,
        )
        return False
    return True


def mirrored_on(nodes: list[str]) -> dict[str, Any]:
    """HA keys that mirror a queue on exactly ``nodes``, synchronising new mirrors by themselves."""
    return {"ha-mode": "nodes", "ha-params": nodes, "ha-sync-mode": "automatic"}
