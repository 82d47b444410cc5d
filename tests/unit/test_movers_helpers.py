"""The pure parts of a move: policy names and patterns, expected mirrors, JSON round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queue_balancer.errors import LeaderTransferError, ManagementError
from queue_balancer.leader_transfer import RESULT_MARKER, TRANSFER_FUN, RaLeaderTransfer, expression
from queue_balancer.model import Move, QueueRef, QueueType
from queue_balancer.movers import (
    POLICY_PREFIX,
    MoveProgress,
    Phase,
    exact_pattern,
    expected_mirrors,
    temporary_policy_name,
)
from queue_balancer.movers.policies import mirrored_on, pcre_matches, put_temporary_policy, request_sync
from tests.unit.fake_cluster import FakeCluster


@pytest.mark.parametrize(
    "name", ["orders.v2", "a+b", "x(y)", "[q]", "a|b", "dollar$", "^hat", "é.ü", "sp ace", "z\\", "\\z"]
)
def test_exact_pattern_matches_only_its_own_name(name: str) -> None:
    pattern = exact_pattern(name)
    assert pattern.endswith("\\z")
    assert pcre_matches(pattern, name)
    assert not pcre_matches(pattern, name + "x")
    assert not pcre_matches(pattern, "x" + name)
    assert not pcre_matches(pattern, name + "\n")  # PCRE's $ would match here


def test_exact_pattern_does_not_match_a_wildcard_neighbour() -> None:
    assert not pcre_matches(exact_pattern("orders.v2"), "ordersXv2")


@given(st.text(min_size=1, max_size=30))
def test_exact_pattern_property(name: str) -> None:
    assert pcre_matches(exact_pattern(name), name)
    assert not pcre_matches(exact_pattern(name), name + "\n")


def test_temporary_policy_name_is_stable_and_distinct_per_queue() -> None:
    a = temporary_policy_name(QueueRef("/", "q"))
    assert a == temporary_policy_name(QueueRef("/", "q"))
    assert a != temporary_policy_name(QueueRef("other", "q"))
    assert a.startswith(POLICY_PREFIX)


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ({"ha-mode": "all"}, 2),
        ({"ha-mode": "exactly", "ha-params": 2}, 1),
        ({"ha-mode": "exactly", "ha-params": 5}, 2),
        ({"ha-mode": "nodes", "ha-params": ["a", "b"]}, 1),
        ({}, 0),
    ],
)
def test_expected_mirrors(definition: dict[str, object], expected: int) -> None:
    assert expected_mirrors(definition, 3, "a") == expected


def test_progress_round_trips_through_json() -> None:
    move = Move("v/1", "q 1", QueueType.CLASSIC, "a", "b", 12)
    progress = MoveProgress(move, Phase.SYNCING, 1.0, 2.0, 12, "p", "ha-all", {"ha-mode": "all"}, 3)
    assert MoveProgress.from_dict(progress.to_dict()) == progress


def test_leader_transfer_expression_carries_names_base64_encoded() -> None:
    text = expression(TRANSFER_FUN, [("/", "q'\"}]).", "rabbit@b")])
    assert "q'" not in text and "rabbit@b" not in text
    assert text.count("\n") == 0


def test_leader_transfer_parses_the_result_line_and_reports_garbage() -> None:
    line = RESULT_MARKER + '[{"vhost":"/","queue":"q","result":"ok"}]'
    transfer = RaLeaderTransfer(lambda _expr: "noise\n" + line + "\nok\n")
    assert transfer.transfer([Move("/", "q", QueueType.QUORUM, "a", "b")]) == {QueueRef("/", "q"): "ok"}
    with pytest.raises(LeaderTransferError, match="no result"):
        RaLeaderTransfer(lambda _expr: "badrpc").transfer([Move("/", "q", QueueType.QUORUM, "a", "b")])


def test_a_temporary_policy_sits_above_every_policy_temporary_ones_included() -> None:
    """A dead run's policy at priority 50 still matches the queue: equal priorities are an undefined tie."""
    cluster = FakeCluster()
    ref = QueueRef("/", "q")
    cluster.add_policy("/", "own", ".*", {"ha-mode": "all"}, priority=7)
    cluster.add_policy("/", temporary_policy_name(ref, "dead1"), "^q$", {"ha-mode": "all"}, priority=50)
    mine = temporary_policy_name(ref, "live1")
    put_temporary_policy(cluster, ref, mine, {"ha-mode": "all"}, mirrored_on(["b"]))
    assert cluster.policy_store[("/", mine)]["priority"] == 51
    put_temporary_policy(
        cluster, ref, mine, {"ha-mode": "all"}, mirrored_on(["c"])
    )  # a retry: not above itself
    assert cluster.policy_store[("/", mine)]["priority"] == 51


class RefusedSync(FakeCluster):
    """A user without the administrator tag: the management API refuses the sync action."""

    def queue_action(self, vhost: str, name: str, action: str) -> None:
        raise ManagementError("Not_Authorized", method="POST", url="/api/queues/x/actions", status=401)


def test_a_sync_the_user_may_not_start_is_waited_out_not_failed() -> None:
    assert request_sync(RefusedSync(), "/", "q") is False


def test_a_sync_refused_for_another_reason_fails() -> None:
    class Broken(FakeCluster):
        def queue_action(self, vhost: str, name: str, action: str) -> None:
            raise ManagementError("boom", status=500)

    with pytest.raises(ManagementError):
        request_sync(Broken(), "/", "q")
