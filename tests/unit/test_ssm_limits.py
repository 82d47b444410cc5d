"""SSM's size limits on the eval path: a batch goes out in commands whose document and parameters stay
under 64 KB and whose answers stay under ``GetCommandInvocation``'s 24,000 characters; an answer cut
short or garbled is a ``LeaderTransferError`` (a failed move), never a JSONDecodeError that crashes
RunBatch. SSM is moto's (documents, instances, commands); only the node's answer is made up here, from
the items each command carried, and cut where AWS cuts it."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas.ssm_eval import SsmEval
from queue_balancer import eval_document
from queue_balancer.errors import LeaderTransferError
from queue_balancer.eval_document import STATUS_FUN, STDOUT_LIMIT, commands
from queue_balancer.leader_transfer import (
    RESULT_MARKER,
    TRANSFER_FUN,
    RaLeaderTransfer,
    expression,
    run_batch,
)
from queue_balancer.member_changes import EvalMemberChanger
from queue_balancer.model import Move, QueueRef, QueueType
from queue_balancer.movers import Mover, MoveSettings, Phase
from tests.unit.fake_cluster import Counter, FakeCluster, FakeQueue

TAG, DOCUMENT = "queue-balancer-cluster", "QueueBalancer-limits-RabbitmqctlEval"
SSM_LIMIT = 64 * 1024
NODE = "rabbit@ip-10-0-12-34.eu-west-1.compute.internal"
Answer = Callable[[str, list[str]], dict[str, Any]]


def ok(operation: str, item: list[str]) -> dict[str, Any]:
    """What the node answers for one item: Ra's ``ok``, or 3.10's status proplists for 5 members."""
    vhost, name = item[0], item[1]
    if operation == "member_status":
        member = {
            "Node Name": NODE,
            "Raft State": "follower",
            "Log Index": 123456,
            "Commit Index": 123456,
            "Snapshot Index": 120000,
            "Term": 7,
            "Machine Version": 3,
        }
        return {"vhost": vhost, "queue": name, "node": "", "result": [member] * 5}
    return {"vhost": vhost, "queue": name, "result": "ok"}


class Node:
    """moto's SSM, with the answers a node would print for each command's items (cut at 24,000)."""

    def __init__(self, ssm: Any, answer: Answer = ok) -> None:
        self.ssm, self.answer = ssm, answer
        self.sent: list[dict[str, list[str]]] = []
        self.outputs: dict[str, str] = {}

    def send_command(self, **kwargs: Any) -> Any:
        parameters = kwargs["Parameters"]
        sent = self.ssm.send_command(**kwargs)
        operation, items = parameters["operation"][0], parameters["items"][0].split(";")
        decoded = [[base64.b64decode(p).decode() for p in item.split(",")] for item in items]
        answers = [self.answer(operation, item) for item in decoded]
        output = RESULT_MARKER + json.dumps(answers, ensure_ascii=False) + "\n"
        self.outputs[sent["Command"]["CommandId"]] = output
        self.sent.append(parameters)
        return sent

    def get_command_invocation(self, **kwargs: Any) -> Any:
        answer = dict(self.ssm.get_command_invocation(**kwargs))
        answer["StandardOutputContent"] = self.outputs[kwargs["CommandId"]][:STDOUT_LIMIT]
        return answer


@pytest.fixture(scope="module")
def aws() -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        ssm, ec2 = boto3.client("ssm", region_name="eu-west-1"), boto3.client("ec2", region_name="eu-west-1")
        ssm.create_document(
            Content=json.dumps(eval_document.content()),
            Name=DOCUMENT,
            DocumentType="Command",
            DocumentFormat="JSON",
        )
        ec2.run_instances(
            ImageId="ami-12c6146b",  # one of moto's stock images (listing them costs seconds)
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": TAG, "Value": "limits"}]}],
        )
        yield ssm, ec2


def ssm_eval(aws: tuple[Any, Any], node: Node) -> SsmEval:
    ec2 = aws[1]
    ip = ec2.describe_instances()["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    return SsmEval(node, ec2, TAG, "limits", DOCUMENT, lambda: [f"rabbit@{ip}"], sleep=lambda _: None)


def long_moves(count: int) -> list[Move]:
    vhost = "tenant-" + "v" * 40
    return [
        Move(vhost, f"orders.{index:04}." + "x" * 60, QueueType.QUORUM, NODE, NODE.replace("12", "56"))
        for index in range(count)
    ]


def test_500_long_named_transfers_go_in_commands_under_both_limits_and_every_answer_comes_back(
    aws: tuple[Any, Any],
) -> None:
    moves = long_moves(500)
    whole = eval_document.parameters(expression(TRANSFER_FUN, [(m.vhost, m.queue, m.target) for m in moves]))
    assert len(whole["items"][0]) > SSM_LIMIT  # one command would be refused
    node = Node(aws[0])
    answers = RaLeaderTransfer(ssm_eval(aws, node)).transfer(moves)
    assert list(answers) == [m.ref for m in moves] and set(answers.values()) == {"ok"}
    document = len(json.dumps(eval_document.content()))
    assert len(node.sent) > 1
    for parameters in node.sent:
        assert document + len(json.dumps(parameters)) < SSM_LIMIT - 16 * 1024
    assert all(len(output) < STDOUT_LIMIT for output in node.outputs.values())
    assert sum(len(p["items"][0].split(";")) for p in node.sent) == 500


def test_member_status_of_many_queues_with_five_members_each_is_read_whole(aws: tuple[Any, Any]) -> None:
    node = Node(aws[0])
    refs = [QueueRef("/", m.queue) for m in long_moves(120)]
    states = EvalMemberChanger(ssm_eval(aws, node)).status(refs)
    assert list(states) == refs
    assert all(isinstance(s, list) and len(s) == 5 and s[0].commit_index == 123456 for s in states.values())
    assert all(len(output) < STDOUT_LIMIT for output in node.outputs.values())
    assert len(commands(expression(STATUS_FUN, [(r.vhost, r.name, "") for r in refs]))) == len(node.sent)


def test_an_answer_cut_at_24000_characters_is_a_leader_transfer_error_and_the_moves_fail_not_crash(
    aws: tuple[Any, Any],
) -> None:
    """Ra answering every transfer with a long error term (a crash report): the output passes the cap."""

    def crash_report(operation: str, item: list[str]) -> dict[str, Any]:
        return {**ok(operation, item), "result": "{'EXIT',{noproc," + "stack," * 400 + "}}"}

    run_eval = ssm_eval(aws, Node(aws[0], crash_report))
    moves = long_moves(30)
    with pytest.raises(LeaderTransferError, match=f"unreadable.*first {STDOUT_LIMIT} characters"):
        RaLeaderTransfer(run_eval).transfer(moves)

    cluster = FakeCluster()
    for move in moves:
        cluster.add_queue(FakeQueue(move.vhost, move.queue, "a", mirrors=["b", "c"], kind="quorum"))
    mover = Mover(cluster, RaLeaderTransfer(run_eval), MoveSettings(poll_interval=0.01), Counter(cluster))
    progress = mover.start([Move(m.vhost, m.queue, QueueType.QUORUM, "a", "b") for m in moves])
    assert [p.phase for p in progress] == [Phase.FAILED] * 30
    assert all("leader transfer failed" in p.outcome and "unreadable" in p.outcome for p in progress)


def test_a_garbled_or_missing_answer_is_a_leader_transfer_error_with_what_the_node_said() -> None:
    items = [("/", "q1", "rabbit@b")]
    garbled = RESULT_MARKER + '[{"vhost": "/", "queue": "q1", "res'
    with pytest.raises(LeaderTransferError, match=r"unreadable .*may have run"):
        run_batch(lambda _: garbled, TRANSFER_FUN, items)
    with pytest.raises(LeaderTransferError, match="not a list of objects"):
        run_batch(lambda _: RESULT_MARKER + '{"vhost": "/"}', TRANSFER_FUN, items)
    with pytest.raises(LeaderTransferError, match="answered 0 of 1 items"):
        run_batch(lambda _: RESULT_MARKER + "[]", TRANSFER_FUN, items)
    with pytest.raises(LeaderTransferError, match="no result; the node said: Error: unable to connect"):
        run_batch(lambda _: "Error: unable to connect", TRANSFER_FUN, items)


def test_every_operation_of_the_document_has_an_answer_size_to_chunk_by() -> None:
    assert set(eval_document.ANSWER_CHARS) == set(eval_document.OPERATIONS)
