"""The workflow at engine speed, on real nodes and the real ASL: default input right after seeding, a
pause that takes effect within seconds in the middle of a large batch, and exact counts over an AMQP
listener that is not on 5672 (found through the management API: the endpoint sets no AMQP port).

Cost: about 40 s of the state-machine suite on 2 cores (three runs of 12-30 small queues).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from queue_balancer.cli.events import perform
from queue_balancer.lifecycle import Event, State
from queue_balancer.movers import MoveProgress
from tests.conftest import wait_until
from tests.statemachine.conftest import Harness, spread

pytestmark = pytest.mark.integration


def recorded_moves(harness: Harness, run_id: str) -> list[MoveProgress]:
    items = harness.table.query(
        KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": f"run#{run_id}"}
    )["Items"]
    return [
        MoveProgress.from_dict(p)
        for item in items
        if "results" in item
        for p in json.loads(str(item["results"]))
    ]


@pytest.mark.parametrize("data", [{}, {"Comment": "Insert your JSON here"}], ids=["empty", "console"])
def test_a_default_run_right_after_seeding_skips_nothing_and_counts_exactly(
    harness: Harness, data: dict[str, Any]
) -> None:
    harness.seed(9, "classic", "c", messages=200)
    harness.seed(3, "quorum", "q", messages=20)
    assert harness.cluster.nodes[0].amqp_port != 5672
    assert "RABBITMQ_AMQP_PORT" not in harness.endpoint.function_environment(secret_arn="", topic_arn="")

    arn = harness.start(data)
    done = harness.finished(arn)

    assert done["status"] == "SUCCEEDED", done.get("cause")
    assert spread(harness.leaders()) <= 1
    record = harness.lifecycle()
    assert (record.outcome, record.counts.skipped, record.counts.failed) == ("completed", 0, 0)
    moves = recorded_moves(harness, record.run_id or "")
    assert len(moves) == record.counts.done >= 8
    assert all(p.exact_count for p in moves), "counted over AMQP on the listener the management API named"
    assert harness.temporary_policies() == []


def test_pause_takes_effect_within_five_seconds_in_the_middle_of_a_large_batch(harness: Harness) -> None:
    harness.seed(30, "classic", "c", messages=100)
    first = harness.cluster.nodes[0].name
    arn = harness.start({"concurrency": 2})  # one batch of 20 moves, two at a time
    wait_until(lambda: harness.leaders()[first] <= 27, timeout=60, what="the batch to be under way")

    asked = time.monotonic()
    perform(harness.workflow, Event.PAUSE)
    paused = harness.wait_state(State.PAUSE, token=True, timeout=15)
    took = time.monotonic() - asked

    assert took <= 5.0, f"pause took {took:.1f} s"
    assert paused.counts.pending > 0, "the batch was still under way when it paused"
    assert harness.temporary_policies() == []  # moves under way finished or were rolled back
    assert str(perform(harness.workflow, Event.CONTINUE)) == "balancing again"
    done = harness.finished(arn)
    assert done["status"] == "SUCCEEDED", done.get("cause")
    assert spread(harness.leaders()) <= 1
    assert harness.lifecycle().counts.done >= 19
