"""A stream's move, best effort: its coordinator restarts it and chooses the new writer among its members.

``start`` changes nothing; ``transfer`` asks for every stream of the batch in one eval (each stream up to
``STREAM_ATTEMPTS`` restarts, see ``stream_transfer``); ``restarting`` then observes, in the real-time view
and within the phase deadline, that every member runs again. Nothing committed may be lost: the new
writer's log tail must not be below the offset committed before (both read by the eval); only where the
offsets could not be read is the message count compared (it moves with retention, so it is not monotonic).
A stream that ends on another member than the target is reported as such ("best effort: coordinator chose
X"), neither failed nor done: later rounds of the run leave it alone. One whose members do not all come
back, or that lost committed messages, fails with that context.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from queue_balancer.errors import BalancerError
from queue_balancer.leader_transfer import NOT_ATTEMPTED
from queue_balancer.model import Queue, QueueRef, QueueType
from queue_balancer.movers.context import MoveContext
from queue_balancer.movers.progress import MoveProgress, Phase
from queue_balancer.stream_transfer import BUDGET_SPENT, EVAL_BUDGET_SECONDS, NOT_SUPPORTED

MOVED = "moved (best effort"
"""The outcome of a stream that landed on its target: ``moved (best effort, 2 attempts)``."""
MISSED = "best effort: coordinator chose"
"""The outcome of a stream the coordinator left on another member: not a failed move."""
NOT_TRIED = "best effort: not restarted"
"""The outcome of a stream whose turn came after the eval's time budget: nothing changed."""


def left_elsewhere(moves: Iterable[MoveProgress]) -> tuple[MoveProgress, ...]:
    """Stream moves that ended without landing (coordinator chose another member, or not restarted): not
    failed, not moved either."""
    return tuple(
        p
        for p in moves
        if p.move.type is QueueType.STREAM and p.phase is Phase.DONE and not p.outcome.startswith(MOVED)
    )


def streams_left(moves: Iterable[MoveProgress]) -> frozenset[QueueRef]:
    """The streams a later round of the same run leaves alone: under a publisher the writer wins again."""
    return frozenset(p.move.ref for p in left_elsewhere(moves))


def start(ctx: MoveContext, progress: MoveProgress) -> MoveProgress:
    """Nothing changes yet: the batch's restarts go to the cluster together (``transfer``)."""
    if ctx.stream_transfer is None:
        return ctx.finish(
            progress, Phase.FAILED, "no leader-transfer primitive configured (see --eval-command)"
        )
    return replace(progress, phase=Phase.RESTARTING, attempts=0)


def transfer(ctx: MoveContext, started: list[MoveProgress]) -> list[MoveProgress]:
    """Ask the coordinator to restart every stream of the batch on its target; then each is observed."""
    asked = [p for p in started if p.phase is Phase.RESTARTING and not p.attempts]
    if not asked or ctx.stream_transfer is None:
        return started
    ids = {id(p) for p in asked}
    try:
        answers = dict(ctx.stream_transfer.transfer_streams([p.move for p in asked]))
    except BalancerError as exc:
        reason = f"stream transfer failed (some of the batch's streams may have restarted): {exc}"
        return [ctx.finish(p, Phase.FAILED, reason) if id(p) in ids else p for p in started]
    result = []
    for p in started:
        answer = answers.get(p.move.ref) if id(p) in ids else None
        if answer is None and id(p) in ids:
            result.append(ctx.finish(p, Phase.FAILED, "no answer from the stream transfer"))
        elif answer is None:
            result.append(p)
        elif answer.result == NOT_SUPPORTED:
            reason = "this RabbitMQ has no rabbit_stream_queue:transfer_leadership/2 (3.12+): nothing changed"
            result.append(ctx.finish(p, Phase.FAILED, reason))
        elif answer.result == BUDGET_SPENT:
            reason = f"{NOT_TRIED}: its turn came after the eval's {EVAL_BUDGET_SECONDS} s budget"
            result.append(ctx.finish(p, Phase.DONE, reason))
        elif answer.result == NOT_ATTEMPTED:
            continue  # its SSM command was never sent: nothing changed, the runner starts it again later
        elif "not_found" in answer.result and not answer.attempts:
            result.append(ctx.finish(p, Phase.FAILED, "queue was deleted"))
        elif answer.result.startswith("{error,") and not answer.attempts:
            reason = f"stream transfer failed (the stream may have restarted): {answer.result}"
            result.append(ctx.finish(p, Phase.FAILED, reason))
        elif answer.lost:
            reason = (
                f"verification: the writer had committed offset {answer.committed_before} before the restart, "
                f"the new writer's log ends at {answer.tail_after}: committed messages lost"
            )
            result.append(ctx.finish(replace(p, attempts=answer.attempts), Phase.FAILED, reason))
        else:
            verified = answer.tail_after is not None and answer.committed_before is not None
            restarted = replace(p, attempts=max(answer.attempts, 1), offsets_verified=verified)
            result.append(ctx.next_phase(restarted, Phase.RESTARTING))
    return result


def restarting(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Every member running again and nothing lost: then landed, or left elsewhere (not failed)."""
    members_back = bool(live.leader) and set(live.in_sync) == set(live.replicas)
    late = ctx.clock() > progress.deadline
    if not members_back:
        if late:
            online = len(live.in_sync) + (1 if live.leader else 0)
            reason = (
                f"stream restarted but its members did not all come back: {online} of "
                f"{len(live.members)} running, leader {live.leader or '(none)'}"
            )
            return ctx.finish(progress, Phase.FAILED, reason)
        return progress
    if progress.offsets_verified:
        # A retention trim or the new writer's first metrics tick moves the count: the offsets said it all.
        return ctx.finish(progress, Phase.DONE, _where(progress, live.leader, ""))
    messages = _messages(ctx, progress)
    if messages is None:
        return ctx.finish(progress, Phase.FAILED, "queue was deleted")
    if messages < progress.messages_before:
        # The new writer publishes its count a moment after it starts: a drop is judged at the deadline.
        if late:
            change = f"message count {progress.messages_before} -> {messages} after the restart"
            return ctx.finish(progress, Phase.FAILED, f"verification: {change}")
        return progress
    return ctx.finish(progress, Phase.DONE, _where(progress, live.leader, ""))


def _where(progress: MoveProgress, leader: str | None, note: str) -> str:
    """``moved (best effort, 2 attempts)`` or ``best effort: coordinator chose X, not T (3 attempts)``."""
    tries = f"{progress.attempts} attempt{'s' if progress.attempts != 1 else ''}{note}"
    if leader == progress.move.target:
        return f"{MOVED}, {tries})"
    return f"{MISSED} {leader}, not {progress.move.target} ({tries})"


def interrupted(ctx: MoveContext, progress: MoveProgress, reason: str) -> MoveProgress:
    """An abort after the restarts (Ctrl-C, a stopped run, the phase deadline): nothing can be undone, so
    say where the stream is now instead of a bare failure; unverified, and failed if it has no leader."""
    try:
        leader = ctx.live(progress.move).leader
    except BalancerError as exc:
        return ctx.finish(progress, Phase.FAILED, f"{reason} after the restart; where it is now: {exc}")
    if not leader:
        return ctx.finish(progress, Phase.FAILED, f"{reason} after the restart; the stream has no leader now")
    return ctx.finish(progress, Phase.DONE, _where(progress, leader, f"; not verified: {reason}"))


def _messages(ctx: MoveContext, progress: MoveProgress) -> int | None:
    """The count the stream's leader reports (AMQP), else the statistics view's (which, after a restart,
    may still add the old writer's count: only a drop below the count before is judged)."""
    move = progress.move
    counts = ctx.counts([move.ref]) if progress.exact_count else {}
    if move.ref in counts:
        count = counts[move.ref]
        return None if count is None else count.messages
    return Queue.from_api(ctx.client.queue(move.vhost, move.queue)).messages
