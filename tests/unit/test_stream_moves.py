"""A stream move's phases against in-memory ports: landed, left elsewhere (not failed), members not back
or a dropped count (failed), and a RabbitMQ without the primitive (nothing changed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from queue_balancer.leader_transfer import NOT_ATTEMPTED
from queue_balancer.model import Move, Queue, QueueCount, QueueRef, QueueType
from queue_balancer.movers import MoveContext, MoveProgress, Phase
from queue_balancer.movers import stream as stream_move
from queue_balancer.stream_transfer import BUDGET_SPENT, NOT_SUPPORTED, StreamAnswer

MOVE = Move("/", "s", QueueType.STREAM, "rabbit@a", "rabbit@b", 100)


@dataclass
class Streams:
    answer: StreamAnswer
    asked: list[Move] = field(default_factory=list)

    def transfer_streams(self, moves: Sequence[Move]) -> Mapping[QueueRef, StreamAnswer]:
        self.asked += moves
        return {m.ref: self.answer for m in moves}


@dataclass
class Counter:
    messages: int

    def message_counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, QueueCount | None]:
        return {r: QueueCount(self.messages, 0) for r in refs}


def context(answer: str, attempts: int, messages: int = 100) -> tuple[MoveContext, list[float]]:
    now = [0.0]
    ctx = MoveContext(
        client=Any,  # type: ignore[arg-type]  # a stream move makes no management call with an exact count
        counter=Counter(messages),
        stream_transfer=Streams(StreamAnswer(attempts, answer)),
        clock=lambda: now[0],
    )
    return ctx, now


def restarted(ctx: MoveContext) -> MoveProgress:
    begun = MoveProgress(MOVE, Phase.VERIFYING, 0.0, 60.0, messages_before=100, exact_count=True)
    (progress,) = stream_move.transfer(ctx, [stream_move.start(ctx, begun)])
    return progress


def live(leader: str, online: tuple[str, ...] = ("rabbit@a", "rabbit@b", "rabbit@c")) -> Queue:
    replicas = tuple(n for n in ("rabbit@a", "rabbit@b", "rabbit@c") if n != leader)
    return Queue("/", "s", QueueType.STREAM, leader, replicas, tuple(n for n in replicas if n in online))


def test_a_stream_that_landed_is_moved_best_effort_with_its_attempts() -> None:
    ctx, _ = context("{migrated,rabbit@b}", 2)
    progress = restarted(ctx)
    assert progress.phase is Phase.RESTARTING and progress.attempts == 2
    done = stream_move.restarting(ctx, progress, live("rabbit@b"))
    assert (done.phase, done.outcome) == (Phase.DONE, "moved (best effort, 2 attempts)")
    assert MoveProgress.from_dict(done.to_dict()) == done


def test_a_stream_the_coordinator_left_elsewhere_is_reported_not_failed() -> None:
    ctx, _ = context("{migrated,rabbit@c}", 3)
    done = stream_move.restarting(ctx, restarted(ctx), live("rabbit@c"))
    assert done.phase is Phase.DONE
    assert done.outcome == "best effort: coordinator chose rabbit@c, not rabbit@b (3 attempts)"


def test_members_not_back_or_a_dropped_count_fail_at_the_deadline_with_what_was_seen() -> None:
    ctx, now = context("{migrated,rabbit@b}", 1)
    progress = restarted(ctx)
    waiting = stream_move.restarting(ctx, progress, live("rabbit@b", online=("rabbit@b", "rabbit@c")))
    assert waiting == progress  # observed again at the next poll
    now[0] = progress.deadline + 1
    failed = stream_move.restarting(ctx, progress, live("rabbit@b", online=("rabbit@b", "rabbit@c")))
    assert failed.phase is Phase.FAILED and "2 of 3 running, leader rabbit@b" in failed.outcome

    ctx, now = context("{migrated,rabbit@b}", 1, messages=90)
    progress = restarted(ctx)
    assert stream_move.restarting(ctx, progress, live("rabbit@b")) == progress
    now[0] = progress.deadline + 1
    failed = stream_move.restarting(ctx, progress, live("rabbit@b"))
    assert (failed.phase, failed.outcome) == (
        Phase.FAILED,
        "verification: message count 100 -> 90 after the restart",
    )


def test_a_rabbitmq_without_the_primitive_changes_nothing_and_says_so() -> None:
    ctx, _ = context(NOT_SUPPORTED, 0)
    failed = restarted(ctx)
    assert failed.phase is Phase.FAILED and "transfer_leadership/2 (3.12+): nothing changed" in failed.outcome
    assert StreamAnswer(1, "{migrated,'rabbit@b'}").chosen == "rabbit@b"
    assert StreamAnswer(1, "{ok,'rabbit@b'}").chosen == "rabbit@b"  # 4.3+


def test_a_stream_past_the_eval_budget_was_not_restarted_and_is_not_failed() -> None:
    """ops-3 #6: the eval starts no restart past its budget; that stream is left, said so."""
    ctx, _ = context(BUDGET_SPENT, 0)
    left = restarted(ctx)
    assert left.phase is Phase.DONE and left.outcome.startswith("best effort: not restarted")
    assert stream_move.streams_left([left]) == {MOVE.ref}


def test_a_stream_whose_command_was_never_sent_is_started_again_and_one_whose_command_failed_fails() -> None:
    """aws-3 #4: a command the slice did not send leaves its streams pending (the runner starts them
    again), never "coordinator chose" the node they never left; a failed command's streams fail."""
    ctx, _ = context(NOT_ATTEMPTED, 0)
    begun = MoveProgress(MOVE, Phase.VERIFYING, 0.0, 60.0, messages_before=100, exact_count=True)
    assert stream_move.transfer(ctx, [stream_move.start(ctx, begun)]) == []
    ctx, _ = context("{error,command 42 timed out}", 0)
    failed = restarted(ctx)
    assert (
        failed.phase is Phase.FAILED and "may have restarted): {error,command 42 timed out}" in failed.outcome
    )


def test_an_interrupt_after_the_restart_says_where_the_stream_is() -> None:
    """ops-3 #10: an abort after the restart used to say FAILED "interrupted" even when it had landed."""

    @dataclass
    class Api:
        leader: str

        def queue_now(self, vhost: str, name: str) -> dict[str, Any]:
            return {"vhost": vhost, "name": name, "type": "stream", "node": self.leader, "members": []}

    ctx, _ = context("{ok,'rabbit@b'}", 1)
    progress = restarted(ctx)
    for leader, outcome in (
        ("rabbit@b", "moved (best effort, 1 attempt; not verified: interrupted)"),
        (
            "rabbit@a",
            "best effort: coordinator chose rabbit@a, not rabbit@b (1 attempt; not verified: interrupted)",
        ),
    ):
        seen = stream_move.interrupted(replace(ctx, client=Api(leader)), progress, "interrupted")  # type: ignore[arg-type]
        assert (seen.phase, seen.outcome) == (Phase.DONE, outcome)


def test_the_offsets_not_the_count_judge_a_restart() -> None:
    """ops-3 #8: a retention trim (or a new writer's first 0) dropped the count and failed a healthy move;
    a new writer whose log ends below the committed offset has lost messages and fails at once."""
    ctx, _ = context("{ok,'rabbit@b'}", 1, messages=0)
    ctx = replace(ctx, stream_transfer=Streams(StreamAnswer(1, "{ok,'rabbit@b'}", 49, 49)))
    progress = restarted(ctx)
    assert progress.offsets_verified
    done = stream_move.restarting(ctx, progress, live("rabbit@b"))
    assert (done.phase, done.outcome) == (Phase.DONE, "moved (best effort, 1 attempt)")
    assert MoveProgress.from_dict(done.to_dict()) == done

    ctx = replace(ctx, stream_transfer=Streams(StreamAnswer(1, "{ok,'rabbit@b'}", 49, 40)))
    lost = restarted(ctx)
    assert lost.phase is Phase.FAILED
    assert "committed offset 49 before the restart, the new writer's log ends at 40" in lost.outcome
