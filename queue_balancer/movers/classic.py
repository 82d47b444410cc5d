"""A classic mirrored queue's move, one function per phase, each driven by the observed queue.

The one invariant: at no step does the queue hold fewer synchronised copies than before the move
(fewer is only possible where every node already holds a copy: then never fewer than all nodes but
one). RabbitMQ 3.10 keeps a queue's mirrors oldest first and, when the primary goes, promotes the
*oldest* surviving mirror, synchronised or not (``rabbit_mirror_queue_misc:promote_slave/1`` and
``remove_from_queue/3``; a new mirror is appended in ``rabbit_mirror_queue_slave``). So the move makes
the target the oldest synchronised mirror and then drops only the primary:

1. SYNCING: the temporary policy mirrors the queue on [primary, kept mirrors..., target] (the kept
   mirrors are its synchronised mirrors, plus a spare node where the target already was one, so the
   count never drops); wait until every one of them is synchronised.
2. REORDERING: each mirror older than the target is dropped and re-added, one at a time, and
   re-synchronised before the next; the target is then the oldest mirror.
3. PROMOTING: the policy leaves the primary out; RabbitMQ drops it and promotes the target.
4. RESTORING: the temporary policy is deleted; the queue's own policy settles its mirrors.

A rollback first asks for every copy the move made or kept (the primary included), waits until they
are synchronised, and only then hands the queue back to its own policy, which drops the extras. Once the
promotion was asked for, it lets it land instead (asking for the primary again would race it) and hands the
queue back on its new primary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from queue_balancer.errors import BalancerError, NotFound
from queue_balancer.model import Queue, QueueType
from queue_balancer.movers.context import MoveContext
from queue_balancer.movers.policies import mirrored_on, policy_exists, request_sync
from queue_balancer.movers.progress import PROMOTION_AWAITED, PROMOTION_RACED, MoveProgress, Phase
from queue_balancer.movers.verify import loss_not_ruled_out, verify

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


def kept_mirrors(live: Queue, target: str, serving: Sequence[str]) -> tuple[str, ...]:
    """The mirrors the queue keeps through the move: its synchronised ones and the target, plus spare
    nodes until the primary can go without the queue holding fewer copies than now. ``serving`` are the
    nodes a spare may be on: running and not in maintenance mode (a drained node takes no new copy)."""
    synced = [n for n in live.replicas if n in live.in_sync and n != target]
    keep = [*synced, target]
    copies_now = 1 + len(live.in_sync)
    wanted = min(copies_now, len(serving) - 1)
    spares = [n for n in sorted(serving) if n not in keep and n != live.leader]
    return tuple(keep + spares[: max(wanted - len(keep), 0)])


def older_than_target(live: Queue, target: str) -> list[str]:
    """Mirrors RabbitMQ would promote before the target (``slave_nodes`` is oldest first)."""
    if target not in live.replicas:
        return []
    return list(live.replicas[: live.replicas.index(target)])


def start(ctx: MoveContext, progress: MoveProgress, live: Queue, serving: Sequence[str]) -> MoveProgress:
    """The first change: mirror the queue on its primary, its synchronised mirrors and the target (spares
    from ``serving``: running nodes not in maintenance mode)."""
    move = progress.move
    name = ctx.policy_name(move.ref)
    unsynced = set(live.replicas) - set(live.in_sync)
    retried = unsynced and policy_exists(ctx.client, move.vhost, name)
    if unsynced and not retried:
        return ctx.finish(progress, Phase.FAILED, f"mirrors out of sync on {', '.join(sorted(unsynced))}")
    if not live.replicas and progress.messages_before:
        reason = f"unmirrored with {progress.messages_before} messages: add an HA policy first"
        return ctx.finish(progress, Phase.FAILED, reason)
    # A retried start (its first attempt put the policy, then its Lambda died) carries on syncing: the
    # mirrors the first attempt asked for are among the replicas, synchronised or not.
    kept = (*(n for n in live.replicas if n != move.target), move.target) if retried else None
    progress = replace(
        progress,
        policy=name,
        mirrors=kept or kept_mirrors(live, move.target, serving),
        target_synced=move.target in live.in_sync,
    )
    return ask(ctx, replace(progress, phase=Phase.SYNCING), (move.source, *progress.mirrors))


def ask(ctx: MoveContext, progress: MoveProgress, nodes: tuple[str, ...]) -> MoveProgress:
    """Mirror the queue on ``nodes`` (one policy change, only when the policy in force differs).

    The stored ``asked`` alone is not trusted: a workflow slice that died after a policy change but
    before saving its progress hands on an older ``asked``, and skipping the PUT then waits a whole
    phase for mirrors nobody asked for."""
    if nodes == progress.asked and policy_asks(ctx, progress) == nodes:
        return progress
    ctx.put_policy(progress, mirrored_on(list(nodes)))
    return ctx.next_phase(replace(progress, asked=nodes), progress.phase)


def policy_asks(ctx: MoveContext, progress: MoveProgress) -> tuple[str, ...] | None:
    """The nodes the move's temporary policy mirrors the queue on now (None: no such policy)."""
    try:
        definition = ctx.client.policy(progress.move.vhost, ctx.policy_name(progress.move.ref))
    except NotFound:
        return None
    params = (definition.get("definition") or {}).get("ha-params")
    return tuple(str(n) for n in params) if isinstance(params, list) else None


def resume_on_target(ctx: MoveContext, progress: MoveProgress) -> MoveProgress:
    """A retried start (or a move RabbitMQ already made): finish the job instead of failing it."""
    ctx.client.delete_policy(progress.move.vhost, ctx.policy_name(progress.move.ref))
    return replace(progress, phase=Phase.RESTORING)


def preparing(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """SYNCING and REORDERING: every kept mirror present and synchronised, the target the oldest."""
    move, kept = progress.move, progress.mirrors
    if move.target in live.in_sync and not progress.target_synced:
        progress = replace(progress, target_synced=True)
    if live.leader == move.target:
        # The source went (a crash, a restart) and RabbitMQ promoted the target: hand the queue back to
        # its own policy and verify. Seen synchronised before, the target holds every message. Never seen
        # so, it may have been promoted without them (ha-promote-on-failure: always): only an exact count,
        # unchanged, with no client in sight, shows it was not; else say so and fail.
        doubt = None if progress.target_synced else loss_not_ruled_out(ctx, progress)
        if doubt is not None:
            reason = (
                f"{move.source} went down and RabbitMQ promoted {move.target} before it was seen "
                f"synchronised: messages may be lost ({doubt})"
            )
            return roll_back(ctx, progress, reason)
        return promoting(ctx, progress, live)
    everything = (move.source, *kept)
    missing = [n for n in kept if n not in live.replicas]
    if missing:
        if progress.asked == everything and ctx.waited(progress) > ctx.settings.sync_nudge_after:
            ctx.check_running(missing)  # a node gone: abort now, not at the phase's deadline
        return ask(ctx, replace(progress, phase=Phase.SYNCING), everything)
    if any(n not in live.in_sync for n in kept):
        return nudge_sync(ctx, progress, live)
    older = older_than_target(live, move.target)
    if older:
        without = tuple(n for n in everything if n != older[0])
        return ask(ctx, replace(progress, phase=Phase.REORDERING), without)
    promoted = (move.target, *(n for n in kept if n != move.target))
    return ask(ctx, replace(progress, phase=Phase.PROMOTING), promoted)


def promoting(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Wait for the target to be the primary, then hand the queue back to its own policy."""
    if live.leader != progress.move.target:
        return progress
    ctx.delete_policy(progress)
    return ctx.next_phase(replace(progress, policy=None), Phase.RESTORING)


def restoring(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Wait for the queue's own mirrors to be back in sync, then verify."""
    if not restored(progress, live):
        return nudge_sync(ctx, progress, live)
    return verify(ctx, replace(progress, phase=Phase.VERIFYING), live)


def roll_back(ctx: MoveContext, progress: MoveProgress, reason: str) -> MoveProgress:
    """Keep every copy (the primary's node included), then hand the queue back (``rolling_back``)."""
    rolling = ctx.next_phase(replace(progress, outcome=reason), Phase.ROLLING_BACK)
    rolling = replace(rolling, deadline=ctx.rollback_deadline(progress))
    if progress.policy is not None and not progress.mirrors:
        # Interrupted while starting, before the move knew its mirrors: its policy (if it was put at
        # all) only added mirrors, so the queue's own policy keeps every copy it had.
        ctx.delete_policy(progress)
        return replace(rolling, policy=None)
    if progress.policy is None:
        return rolling
    asked = in_force(ctx, progress)
    if asked and progress.move.source not in asked:
        # A promotion was asked (every kept copy synchronised) and may land at any moment. Asking for the
        # source again now races it: the change can reach a primary that is dropping itself, and RabbitMQ
        # loses it (seen on 3.10: the queue stayed on the target with one mirror of two). Let it land.
        return replace(rolling, asked=asked, promotion=PROMOTION_AWAITED)
    return ask(ctx, rolling, (progress.move.source, *progress.mirrors))


def in_force(ctx: MoveContext, progress: MoveProgress) -> tuple[str, ...]:
    """The nodes the move's temporary policy asks for now; the stored ``asked`` if that cannot be read.
    The stored one can be stale: a policy write that landed but raised, a slice that died after one."""
    try:
        return policy_asks(ctx, progress) or progress.asked
    except BalancerError:
        return progress.asked


def rolling_back(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Wait (bounded) for every kept copy to be synchronised, delete the temporary policy, then wait
    (bounded) for the queue's own mirrors to be back in sync."""
    move = progress.move
    if progress.promotion == PROMOTION_AWAITED and progress.policy is not None and live.leader == move.source:
        # Landed once the source no longer leads: on the target, or on another kept copy if the target's
        # node went (the policy leaves the source out either way).
        if ctx.waited(progress) <= ctx.settings.sync_nudge_after:
            return progress
        # Not seen: keep every copy as any rollback does; the promotion may still land (``handback_settle``).
        return ask(ctx, replace(progress, promotion=PROMOTION_RACED), (move.source, *progress.mirrors))
    if progress.policy is not None:
        # Every copy asked for, synchronised; a node absent after a few seconds is down (or dropped by
        # someone else): waiting for it would only hold the rollback until its deadline.
        settled = ctx.waited(progress) > ctx.settings.sync_nudge_after
        copies = [n for n in progress.asked if n != live.leader and (n in live.replicas or not settled)]
        if all(n in live.in_sync for n in copies) or ctx.clock() > progress.deadline:
            ctx.delete_policy(progress)
            now = ctx.clock()
            judged_from = now + (ctx.settings.handback_settle if progress.promotion == PROMOTION_RACED else 0)
            return replace(
                progress, policy=None, handed_back_at=now, deadline=max(progress.deadline, judged_from)
            )
        return nudge_sync(ctx, progress, live)
    if progress.promotion == PROMOTION_RACED and ctx.clock() - (progress.handed_back_at or 0.0) < (
        ctx.settings.handback_settle
    ):
        return progress  # the promotion asked before may still land and undo what is seen now
    where = "rolled back" if live.leader == move.source else f"stayed on {live.leader}"
    if restored(progress, live):
        return ctx.finish(progress, Phase.FAILED, f"{progress.outcome}; {where}")
    if ctx.clock() > progress.deadline:
        missing = expected_mirrors(progress.original_definition, progress.cluster_size, live.leader)
        state = f"{len(live.in_sync)} of {missing} mirrors in sync"
        return ctx.finish(progress, Phase.FAILED, f"{progress.outcome}; {where}; NOT back in sync ({state})")
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
    waited_ = ctx.waited(progress)
    if waited_ < ctx.settings.sync_nudge_after * progress.nudges:
        return progress
    handed_back = progress.policy is None and progress.phase in (Phase.RESTORING, Phase.ROLLING_BACK)
    wanted = expected_mirrors(progress.original_definition, progress.cluster_size, live.leader)
    if handed_back and len(live.replicas) < wanted:
        if waited_ > ctx.settings.sync_nudge_after and progress.nudges < MAX_NUDGES:
            touch_own_policy(ctx, progress)
            return replace(progress, nudges=progress.nudges + 1)
        return progress
    if progress.nudges or set(live.replicas) <= set(live.in_sync):
        return progress
    manual = handed_back and progress.original_definition.get("ha-sync-mode", "manual") != "automatic"
    if (manual and progress.messages_before) or waited_ > ctx.settings.sync_nudge_after:
        request_sync(ctx.client, progress.move.vhost, progress.move.queue)
        return replace(progress, nudges=1)
    return progress


def touch_own_policy(ctx: MoveContext, progress: MoveProgress) -> None:
    """Put a one-queue policy with the queue's own HA keys, then delete it: the queue re-reads its policy."""
    touched = replace(progress, policy=ctx.policy_name(progress.move.ref))
    ha = {k: v for k, v in progress.original_definition.items() if k.startswith("ha-")}
    ctx.put_policy(touched, ha)
    ctx.delete_policy(touched)
