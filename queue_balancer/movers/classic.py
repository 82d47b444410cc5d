"""A classic mirrored queue's move, one function per phase, each driven by the observed queue.

The temporary policy (``policies``) mirrors the queue on [leader, target] with automatic sync -> once
the target mirror is synchronised the policy becomes [target] -> RabbitMQ promotes the target -> the
temporary policy is deleted -> the queue's own policy re-mirrors it -> the move is verified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from queue_balancer.model import Queue, QueueType
from queue_balancer.movers.context import MoveContext
from queue_balancer.movers.policies import mirrored_on, policy_exists, temporary_policy_name
from queue_balancer.movers.progress import MoveProgress, Phase
from queue_balancer.movers.verify import verify

MAX_NUDGES = 5


def expected_mirrors(definition: Mapping[str, Any], cluster_size: int, leader: str) -> int:
    """How many synchronised mirrors the queue's own policy gives it once it has settled."""
    mode = definition.get("ha-mode")
    params = definition.get("ha-params")
    if mode == "all":
        return max(cluster_size - 1, 0)
    if mode == "exactly" and isinstance(params, int):
        return max(min(params, cluster_size) - 1, 0)
    if mode == "nodes" and isinstance(params, list):
        return len({str(n) for n in params} - {leader})
    return 0


def start(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """The first change: put the temporary policy (the leader is on the source, checked by the caller)."""
    move = progress.move
    name = temporary_policy_name(move.ref)
    unsynced = set(live.replicas) - set(live.in_sync)
    if unsynced and policy_exists(ctx.client, move.vhost, name):
        # A retried start (the first attempt put the policy, then its Lambda died): carry on syncing
        # instead of failing on the mirror the first attempt asked for.
        progress = replace(progress, policy=name)
        ctx.put_policy(progress, mirrored_on([move.source, move.target]))
        return replace(progress, phase=Phase.SYNCING)
    if unsynced:
        return ctx.finish(progress, Phase.FAILED, f"mirrors out of sync on {', '.join(sorted(unsynced))}")
    if not live.replicas and progress.messages_before:
        reason = f"unmirrored with {progress.messages_before} messages: add an HA policy first"
        return ctx.finish(progress, Phase.FAILED, reason)
    direct = move.target in live.in_sync
    progress = replace(progress, policy=name)
    ctx.put_policy(progress, mirrored_on([move.target] if direct else [move.source, move.target]))
    return replace(progress, phase=Phase.PROMOTING if direct else Phase.SYNCING)


def resume_on_target(ctx: MoveContext, progress: MoveProgress) -> MoveProgress:
    """A retried start (or a move RabbitMQ already made): finish the job instead of failing it."""
    ctx.client.delete_policy(progress.move.vhost, temporary_policy_name(progress.move.ref))
    return replace(progress, phase=Phase.RESTORING)


def syncing(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Wait for the target mirror to be synchronised, then ask RabbitMQ to promote it."""
    move = progress.move
    if move.target not in live.in_sync:
        return nudge_sync(ctx, progress, live)
    ctx.put_policy(progress, mirrored_on([move.target]))
    return ctx.next_phase(progress, Phase.PROMOTING)


def promoting(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Wait for the target to be the master, then hand the queue back to its own policy."""
    if live.leader != progress.move.target:
        return progress
    ctx.delete_policy(progress)
    return ctx.next_phase(replace(progress, policy=None), Phase.RESTORING)


def restoring(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Wait for the queue's own mirrors to be back in sync, then verify."""
    if not restored(progress, live):
        return nudge_sync(ctx, progress, live)
    return verify(ctx, replace(progress, phase=Phase.VERIFYING), live)


def rolling_back(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """The temporary policy is gone: wait (bounded) for the queue's own mirrors to be back in sync."""
    if restored(progress, live):
        return ctx.finish(progress, Phase.FAILED, progress.outcome)
    if ctx.clock() > progress.deadline:
        return ctx.finish(progress, Phase.FAILED, progress.outcome + "; mirrors not yet back in sync")
    return nudge_sync(ctx, progress, live)


def restored(progress: MoveProgress, live: Queue) -> bool:
    """Mirrors back as the queue's own policy wants them, and all of them synchronised."""
    if live.type is QueueType.QUORUM:
        return len(live.in_sync) == len(live.replicas)
    wanted = expected_mirrors(progress.original_definition, progress.cluster_size, live.leader)
    return len(live.in_sync) >= wanted and set(live.replicas) <= set(live.in_sync)


def nudge_sync(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Help mirrors that do not come by themselves; bounded, and only after waiting on them first.

    - Mirrors the queue's own policy wants but the queue does not have (after the temporary policy
      was deleted): now and then the queue process misses that policy change and keeps running
      unmirrored (seen on 3.10 in about 1 of 20 large moves, and after the built-in rebalance too).
      Putting and deleting a one-queue policy with the queue's own HA keys makes it re-read its
      policy; a sync request does nothing there, as there is no mirror to sync.
    - Mirrors present but not synchronised: with ``ha-sync-mode: manual`` they never sync by
      themselves, and now and then an automatic sync does not start; a sync request starts it.
    """
    waited = ctx.clock() - progress.phase_started_at
    if waited < ctx.settings.sync_nudge_after * progress.nudges:
        return progress
    restoring_ = progress.phase in (Phase.RESTORING, Phase.ROLLING_BACK)
    wanted = expected_mirrors(progress.original_definition, progress.cluster_size, live.leader)
    if restoring_ and len(live.replicas) < wanted:
        if waited > ctx.settings.sync_nudge_after and progress.nudges < MAX_NUDGES:
            touch_own_policy(ctx, progress)
            return replace(progress, nudges=progress.nudges + 1)
        return progress
    if progress.nudges or set(live.replicas) <= set(live.in_sync):
        return progress
    manual = restoring_ and progress.original_definition.get("ha-sync-mode", "manual") != "automatic"
    if (manual and progress.messages_before) or waited > ctx.settings.sync_nudge_after:
        ctx.client.queue_action(progress.move.vhost, progress.move.queue, "sync")
        return replace(progress, nudges=1)
    return progress


def touch_own_policy(ctx: MoveContext, progress: MoveProgress) -> None:
    """Put a one-queue policy with the queue's own HA keys, then delete it: the queue re-reads its policy."""
    touched = replace(progress, policy=temporary_policy_name(progress.move.ref))
    ha = {k: v for k, v in progress.original_definition.items() if k.startswith("ha-")}
    ctx.put_policy(touched, ha)
    ctx.delete_policy(touched)
