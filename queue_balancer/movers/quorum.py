"""A quorum queue's move: Ra transfers the leadership exactly (``leader_transfer``), in one call per batch."""

from __future__ import annotations

from dataclasses import replace

from queue_balancer.errors import BalancerError, ConfigurationError, NodeDown
from queue_balancer.leader_transfer import NOT_ATTEMPTED, NOT_VOTER, SUCCESS
from queue_balancer.model import Queue
from queue_balancer.movers.context import MoveContext
from queue_balancer.movers.progress import MoveProgress, Phase
from queue_balancer.movers.verify import verify


def start(ctx: MoveContext, progress: MoveProgress) -> MoveProgress:
    """Nothing changes yet: the batch's transfers go to the cluster together (``transfer``)."""
    if ctx.leader_transfer is None:
        return ctx.finish(progress, Phase.FAILED, "no leader-transfer primitive configured")
    return replace(progress, phase=Phase.TRANSFERRING)


def transfer(ctx: MoveContext, started: list[MoveProgress]) -> list[MoveProgress]:
    """Ask Ra for every transfer of the batch at once; a refused or unanswered one fails its move. One whose
    command was never sent (``NOT_ATTEMPTED``: the slice was stopping or out of time) is left out of the
    result: nothing changed, and the runner keeps it pending for a later slice."""
    transfers = [p for p in started if p.phase is Phase.TRANSFERRING]
    if not transfers:
        return started
    if ctx.leader_transfer is None:
        raise ConfigurationError("quorum transfers started without a leader-transfer primitive")
    try:
        answers = ctx.leader_transfer.transfer([p.move for p in transfers])
    except BalancerError as exc:
        answers = {p.move.ref: f"leader transfer failed: {exc}" for p in transfers}
    asked = {id(p) for p in transfers}
    result = []
    for p in started:
        answer = answers.get(p.move.ref, "no answer from the leader transfer")
        if id(p) not in asked or answer in SUCCESS:
            result.append(p)
        elif answer == NOT_ATTEMPTED:
            continue
        elif "not_found" in answer:
            result.append(ctx.finish(p, Phase.FAILED, "queue was deleted"))
        elif answer.startswith(NOT_VOTER):
            membership = answer[len(NOT_VOTER) :].rstrip("}")
            reason = (
                f"{p.move.target} is a {membership} member without a vote: never made leader; nothing changed"
            )
            result.append(ctx.finish(p, Phase.FAILED, reason))
        else:
            result.append(ctx.finish(p, Phase.FAILED, f"leader transfer refused: {answer}"))
    return result


def transferring(ctx: MoveContext, progress: MoveProgress, live: Queue) -> MoveProgress:
    """Ra's answer comes before the election ends: wait for the leader to be on the target, then verify.

    A target whose member is offline is asked about, at most once every ``sync_nudge_after`` seconds: two
    readings in a row that find its node not running fail the move (nothing to undo: the leader stays
    where Ra keeps it, and an election under way may still change it), not the phase's deadline a minute
    later. A slow or flapping member, or an unanswered question, only waits."""
    target = progress.move.target
    if live.leader == target:
        return verify(ctx, replace(progress, phase=Phase.VERIFYING), live)
    if target in live.in_sync or ctx.waited(progress) <= ctx.settings.sync_nudge_after:
        return progress
    asked = replace(progress, phase_started_at=ctx.clock())
    try:
        ctx.check_running([target])
    except NodeDown:
        if progress.target_down_readings >= 1:
            raise
        return replace(asked, target_down_readings=1)
    except BalancerError:
        return asked
    return replace(asked, target_down_readings=0)
