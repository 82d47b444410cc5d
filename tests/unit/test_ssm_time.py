"""SSM's time limits on the eval path (aws-3 #4, #7): a command's estimated worst case fits the wait;
commands go one at a time, none once the slice is stopping or out of budget (those items are answered
``not_attempted`` and started again later, never failed); a failed command fails only its own items.
SSM is moto's (``tests.unit.test_ssm_limits``); only the node's answers are made up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from queue_balancer import eval_document
from queue_balancer.errors import LeaderTransferError
from queue_balancer.eval_document import COMMAND_SECONDS, ITEM_SECONDS, command_seconds, commands, item_names
from queue_balancer.leader_transfer import (
    NOT_ATTEMPTED,
    TRANSFER_FUN,
    RaLeaderTransfer,
    expression,
    run_batch,
)
from queue_balancer.model import Move, QueueRef, QueueType
from queue_balancer.movers import Mover, MoveSettings, Phase
from queue_balancer.runner import run_moves
from queue_balancer.stream_transfer import STREAM_TRANSFER_FUN
from tests.unit.fake_cluster import Counter, FakeCluster, FakeQueue, Transfer
from tests.unit.test_ssm_limits import Node, aws, long_moves, ok, ssm_eval

__all__ = ["aws"]  # the moto fixture, shared with the size tests

DOCUMENT_TIMEOUT = 120.0


def stream_items(count: int) -> list[tuple[str, str, str]]:
    return [(m.vhost, m.queue, m.target) for m in long_moves(count)]


def test_a_batch_of_loaded_streams_goes_in_commands_whose_worst_case_fits_the_wait() -> None:
    chunks = commands(expression(STREAM_TRANSFER_FUN, stream_items(30)))
    assert [len(c["items"][0].split(";")) for c in chunks] == [10, 10, 10]
    assert all(command_seconds(c) <= COMMAND_SECONDS for c in chunks)
    assert COMMAND_SECONDS < 90.0 < DOCUMENT_TIMEOUT  # SsmEval's longest wait, then the document's
    assert set(ITEM_SECONDS) == set(eval_document.OPERATIONS)


def test_no_command_goes_out_once_the_slice_is_out_of_budget_and_its_items_are_not_attempted(
    aws: tuple[Any, Any],
) -> None:
    node = Node(aws[0])
    left = [200.0]

    def sent_one(**kwargs: Any) -> Any:
        left[0] = 30.0  # the first command took most of the budget: a second one (75 s) no longer fits
        return Node.send_command(node, **kwargs)

    node.send_command = sent_one  # type: ignore[method-assign]
    run_eval = replace(ssm_eval(aws, node), window=lambda: left[0])
    answers = run_batch(run_eval, STREAM_TRANSFER_FUN, stream_items(25))
    assert len(node.sent) == 1
    assert [a["result"] for a in answers] == ["ok"] * 10 + [NOT_ATTEMPTED] * 15


def test_no_command_goes_out_once_the_slice_is_asked_to_stop(aws: tuple[Any, Any]) -> None:
    node = Node(aws[0])
    run_eval = replace(ssm_eval(aws, node), stopping=lambda: bool(node.sent))
    answers = run_batch(run_eval, STREAM_TRANSFER_FUN, stream_items(25))
    assert len(node.sent) == 1
    assert [a["result"] for a in answers][9:11] == ["ok", NOT_ATTEMPTED]


def test_a_command_waits_no_longer_than_the_slice_budget_left(aws: tuple[Any, Any]) -> None:
    """A command that never finishes: the wait ends with the slice's budget (20 s), not 90 s."""
    now = [0.0]

    class Stuck(Node):
        def get_command_invocation(self, **kwargs: Any) -> Any:
            return {**super().get_command_invocation(**kwargs), "Status": "InProgress"}

    def later(seconds: float) -> None:
        now[0] += seconds

    run_eval = replace(ssm_eval(aws, Stuck(aws[0])), window=lambda: 20.0, clock=lambda: now[0], sleep=later)
    with pytest.raises(LeaderTransferError, match="did not finish within 20 s"):
        run_batch(run_eval, TRANSFER_FUN, stream_items(3))
    assert 20.0 <= now[0] < 21.0


def test_one_failed_command_fails_only_its_own_items(aws: tuple[Any, Any]) -> None:
    """aws-3 #7: the second command's answer is cut short; the other commands' answers stand."""
    moves = long_moves(300)
    chunks = commands(expression(TRANSFER_FUN, [(m.vhost, m.queue, m.target) for m in moves]))
    second = {name for _, name, _ in item_names(chunks[1])}

    def second_garbled(operation: str, item: list[str]) -> dict[str, Any]:
        if item[1] in second:
            return {**ok(operation, item), "result": "{'EXIT'," + "stack," * 400 + "}"}
        return ok(operation, item)

    answers = RaLeaderTransfer(ssm_eval(aws, Node(aws[0], second_garbled))).transfer(moves)
    failed = {ref.name for ref, result in answers.items() if result != "ok"}
    assert len(chunks) > 2 and failed == second and len(answers) == 300
    assert all(answers[QueueRef(moves[0].vhost, name)].startswith("{error,command ") for name in second)


@dataclass
class OneCommandAtATime(Transfer):
    """Ra's transfer behind an eval whose slice stopped after its first command: the first call answers
    the first half, the rest ``not_attempted``; later calls answer all."""

    calls: list[list[str]] = field(default_factory=list)

    def transfer(self, moves: Sequence[Move]) -> dict[QueueRef, str]:
        self.calls.append([m.queue for m in moves])
        sent = moves if len(self.calls) > 1 else moves[: len(moves) // 2]
        answers = {m.ref: NOT_ATTEMPTED for m in moves}
        return {**answers, **super().transfer(sent)}


def test_a_transfer_that_was_not_attempted_is_started_again_not_failed() -> None:
    cluster = FakeCluster()
    names = [f"q{index}" for index in range(4)]
    for name in names:
        cluster.add_queue(FakeQueue("/", name, "a", mirrors=["b", "c"], kind="quorum"))
    transfer = OneCommandAtATime(cluster)
    mover = Mover(cluster, transfer, MoveSettings(poll_interval=0.0, settle_timeout=0.0), Counter(cluster))
    result = run_moves(mover, [Move("/", n, QueueType.QUORUM, "a", "b") for n in names], sleep=lambda _: None)
    assert [p.phase for p in result.moves] == [Phase.DONE] * 4
    assert transfer.calls == [names, names[2:]]
