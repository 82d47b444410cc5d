"""The last phase of every move: leader on target, and the message count unchanged.

The count before and after comes from the queue process itself (``MessageCounter``) when it can; without
one, from the statistics view once it has caught up with the real-time view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from queue_balancer.model import Queue
from queue_balancer.movers.context import MoveContext
from queue_balancer.movers.progress import MoveProgress, Phase


def has_traffic(stats: Mapping[str, Any]) -> bool:
    """Whether clients are using the queue, in which case its message count may change legitimately."""
    rates = stats.get("message_stats") or {}
    busy = any(
        (rates.get(f"{key}_details") or {}).get("rate", 0) > 0 for key in ("publish", "deliver_get", "ack")
    )
    return busy or int(stats.get("consumers") or 0) > 0


def verify(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Leader on target, then the message count compared with the one before the move."""
    if live.leader != progress.move.target:
        return ctx.finish(progress, Phase.FAILED, f"verification: leader is on {live.leader}")
    counts = ctx.counts([progress.move.ref]) if progress.exact_count else {}
    if progress.move.ref not in counts:
        return verify_stats(ctx, progress, live)
    count = counts[progress.move.ref]
    if count is None:
        return ctx.finish(progress, Phase.FAILED, "queue was deleted")

    def traffic() -> bool:
        move = progress.move
        return count.consumers > 0 or has_traffic(ctx.client.queue(move.vhost, move.queue))

    return judge(ctx, progress, count.messages, traffic)


def loss_not_ruled_out(ctx: MoveContext, progress: MoveProgress) -> str | None:
    """None when an exact count shows the queue holding what it held before the move, with no client in
    sight then or now (clients could keep a count level across a loss, and the messages a consumer on the
    dead node held unacknowledged are in neither count); else what leaves a loss possible."""
    move = progress.move
    if progress.idle_at_start is None:
        return "whether clients used the queue when the move began is not known"
    if not progress.idle_at_start:
        return "clients were using the queue when the move began"
    counts = ctx.counts([move.ref]) if progress.exact_count else {}
    if move.ref not in counts:
        return "no exact count to tell"
    count = counts[move.ref]
    if count is None:
        return "the queue is gone"
    if count.messages != progress.messages_before:
        return f"message count {progress.messages_before} -> {count.messages}"
    if count.consumers > 0 or has_traffic(ctx.client.queue(move.vhost, move.queue)):
        return f"message count {count.messages} unchanged, but clients use the queue"
    return None


CHANGED_UNDER_TRAFFIC = "changed under traffic"


def judge(
    ctx: MoveContext, progress: MoveProgress, messages: int, traffic: Callable[[], bool], source: str = ""
) -> MoveProgress:
    """The move is done; a changed count is said as such, never as a clean "done".

    A move cannot create messages, so a count that grew is client traffic, whatever the lagging
    statistics view says about rates; only a count that shrank with no client in sight fails the move.
    """
    if messages == progress.messages_before:
        return ctx.finish(progress, Phase.DONE, "")
    change = f"message count {progress.messages_before} -> {messages}{source}"
    if messages > progress.messages_before or traffic():
        return ctx.finish(progress, Phase.DONE, f"{CHANGED_UNDER_TRAFFIC}: {change}")
    return ctx.finish(progress, Phase.FAILED, f"verification: {change} with no client traffic")


def verify_stats(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Without an Erlang shell: compare counts once the statistics view has caught up with the queue."""
    move = progress.move
    stats_raw = ctx.client.queue(move.vhost, move.queue)
    stats = Queue.from_api(stats_raw)
    settled = (
        stats.leader == live.leader
        and set(stats.replicas) == set(live.replicas)
        and stats.policy == progress.original_policy
    )
    if not settled:
        if ctx.clock() > progress.deadline + ctx.settings.settle_timeout:
            return ctx.finish(progress, Phase.FAILED, "verification: statistics never caught up")
        return progress
    quiet_drop_at = progress.quiet_drop_at
    if quiet_drop_at is None and stats.messages < progress.messages_before and not has_traffic(stats_raw):
        quiet_drop_at = ctx.clock()
    if quiet_drop_at is None:
        return judge(ctx, progress, stats.messages, lambda: has_traffic(stats_raw), " (statistics view)")
    # After a leader change (a node gone, a move) the statistics view shows the old leader's count until
    # the new one publishes its own, a few seconds on (0 for a quorum queue whose leader's node died). A
    # count that fell with no client in sight passes only by coming back exactly within settle_timeout;
    # traffic seen later excuses nothing.
    if stats.messages == progress.messages_before:
        return ctx.finish(progress, Phase.DONE, "")
    if ctx.clock() - quiet_drop_at < ctx.settings.settle_timeout:
        return replace(progress, quiet_drop_at=quiet_drop_at)
    change = f"message count {progress.messages_before} -> {stats.messages} (statistics view)"
    return ctx.finish(progress, Phase.FAILED, f"verification: {change}; it fell with no client traffic")
