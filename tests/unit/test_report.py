"""Distribution tables: figures, per-vhost split, skipped queues, queues under a temporary policy,
before/after summaries."""

from __future__ import annotations

import json

from queue_balancer.model import Move, Node, Queue, QueueRef, QueueType, Snapshot
from queue_balancer.movers import MoveProgress, Phase, temporary_policy_name
from queue_balancer.report import Report, RunSummary, markdown, summary_markdown, summary_text, text

NODES = ("rabbit@a", "rabbit@b", "rabbit@c")


def _snapshot(leaders: list[tuple[str, str, QueueType]], extra: tuple[Queue, ...] = ()) -> Snapshot:
    queues = tuple(Queue(v, f"q{i}", t, leader, (), (), 0) for i, (v, leader, t) in enumerate(leaders))
    return Snapshot(tuple(Node(n, True) for n in NODES), queues + extra)


def test_report_counts_leaders_by_type_and_vhost_with_the_seed_figure() -> None:
    snap = _snapshot(
        [("/", "rabbit@a", QueueType.CLASSIC)] * 4 + [("shop", "rabbit@b", QueueType.QUORUM)] * 2,
        (Queue("/", "full", QueueType.CLASSIC, "rabbit@a", (), (), 120),),
    )
    report = Report.of(snap)
    assert report.leaders == {"rabbit@a": 5, "rabbit@b": 2, "rabbit@c": 0}
    assert report.by_type["quorum"] == {"rabbit@a": 0, "rabbit@b": 2, "rabbit@c": 0}
    assert report.spread == 5 and report.equilibrium == 0.0
    data = json.loads(json.dumps(report.to_dict()))
    assert data["by_vhost"]["shop"]["spread"] == 2
    reasons = {s["queue"]: s["reason"] for s in data["skipped"]}
    assert reasons["full"] == "unmirrored with 120 messages: add an HA policy first"
    rendered = text(report)
    assert "spread (max - min): 5" in rendered and "Per vhost" in rendered and "full" in rendered
    assert markdown(report).startswith("| node | total |")


def _ended(name: str, queue_type: QueueType, phase: Phase, outcome: str) -> MoveProgress:
    move = Move("/", name, queue_type, "rabbit@a", "rabbit@b")
    return MoveProgress(move, phase, 0, 0, outcome=outcome, finished_at=1.5)


def test_run_summary_shows_before_after_and_failures() -> None:
    before = Report.of(_snapshot([("/", "rabbit@a", QueueType.CLASSIC)] * 3))
    after = Report.of(_snapshot([("/", n, QueueType.CLASSIC) for n in NODES]))
    failed = _ended("q9", QueueType.CLASSIC, Phase.FAILED, "timed out while syncing")
    run = RunSummary(before, after, (failed,), 2.0)
    assert "spread 3 -> 0" in summary_text(run)
    assert "timed out while syncing" in summary_text(run)
    assert "| rabbit@a | 3 | 1 |" in summary_markdown(run)
    assert run.to_dict()["moves_failed"] == 1


def test_queues_under_a_temporary_policy_are_flagged_with_the_run_that_put_it() -> None:
    leftover = temporary_policy_name(QueueRef("/", "q1"), "dead1")
    snap = _snapshot(
        [("/", "rabbit@a", QueueType.CLASSIC)],
        (
            Queue("/", "q1", QueueType.CLASSIC, "rabbit@b", policy=leftover),
            Queue("/", "q2", QueueType.CLASSIC, "rabbit@c", policy="ha-two"),
        ),
    )
    report = Report.of(snap)
    assert [p.to_dict() for p in report.pinned] == [
        {"vhost": "/", "queue": "q1", "node": "rabbit@b", "policy": leftover, "run": "dead1"}
    ]
    assert report.to_dict()["pinned"][0]["run"] == "dead1"
    assert f"'q1' in vhost '/' on rabbit@b: {leftover} (run dead1)" in text(report)
    assert "left by a run that died" in text(report) and "`queue-balancer cleanup`" in markdown(report)
    assert Report.of(_snapshot([("/", "rabbit@a", QueueType.CLASSIC)])).pinned == ()


def test_the_report_shows_the_copies_per_node_of_ha_mode_exactly_queues() -> None:
    exactly = {"ha-mode": "exactly", "ha-params": 2}
    mirrored = tuple(
        Queue(
            "/",
            f"m{i}",
            QueueType.CLASSIC,
            "rabbit@a",
            ("rabbit@b",),
            ("rabbit@b",),
            0,
            policy_definition=exactly,
        )
        for i in range(3)
    )
    report = Report.of(_snapshot([("/", "rabbit@a", QueueType.QUORUM)], mirrored))
    assert report.exactly_copies == {"rabbit@a": 3, "rabbit@b": 3, "rabbit@c": 0}
    data = report.to_dict()
    assert (data["exactly_copies"], data["exactly_copies_spread"]) == (dict(report.exactly_copies), 3)
    assert "Classic queues under ha-mode exactly: copies per node" in text(report)
    assert Report.of(_snapshot([("/", "rabbit@a", QueueType.CLASSIC)])).exactly_copies == {}


def test_stream_moves_are_listed_as_best_effort_in_every_report_and_none_counts_as_failed() -> None:
    before = Report.of(_snapshot([("/", "rabbit@a", QueueType.STREAM)] * 3))
    after = Report.of(
        _snapshot([("/", "rabbit@a", QueueType.STREAM)] * 2 + [("/", "rabbit@c", QueueType.STREAM)])
    )
    line = "best effort: coordinator chose rabbit@c, not rabbit@b (3 attempts)"
    run = RunSummary(before, after, (_ended("q1", QueueType.STREAM, Phase.DONE, line),), 5.0)
    assert line in summary_text(run) and f"- stream `/` / `q1`: {line}" in summary_markdown(run)
    brief = run.brief_dict()
    assert brief["moves_failed"] == 0 and brief["best_effort"][0]["outcome"] == line


def test_streams_left_elsewhere_are_counted_apart_not_as_done() -> None:
    """ops-3 #7: a run whose coordinator kept the stream on its source printed "1 done, 0 failed"."""
    before = Report.of(_snapshot([("/", "rabbit@a", QueueType.STREAM)] * 2))
    left = _ended("q1", QueueType.STREAM, Phase.DONE, "best effort: coordinator chose rabbit@a, not rabbit@b")
    landed = _ended("q2", QueueType.STREAM, Phase.DONE, "moved (best effort, 1 attempt)")
    run = RunSummary(before, before, (left, landed), 5.0)
    assert "moves: 1 done, 1 streams left elsewhere (best effort), 0 failed" in summary_text(run)
    assert "moves: 1 done, 1 streams left elsewhere (best effort), 0 failed" in summary_markdown(run)
    assert (run.brief_dict()["moves_done"], run.brief_dict()["streams_left"]) == (1, 1)
    assert (run.to_dict()["moves_done"], run.to_dict()["streams_left"]) == (1, 1)
