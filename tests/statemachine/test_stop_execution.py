"""StopExecution in the middle of a batch, on real nodes and the real ASL (aws-2 #5): the RunBatch slice
under way is not stopped by Step Functions, so the Cleanup function - invoked here with the status
change EventBridge delivers - asks it to stop, waits for it, and only then undoes the run. Nothing is
left behind (no temporary policy, neither lock) and no move starts after the stop.

Cost: about 40 s on 2 cores at load average 10 (12 small classic queues, a few of their moves made).
"""

from __future__ import annotations

import time

import pytest

from queue_balancer.batch_slice import CONTROL_INTERVAL
from queue_balancer.lifecycle import State
from queue_balancer.model import Queue
from tests.conftest import wait_until
from tests.statemachine.conftest import Harness
from tests.statemachine.test_speed import recorded_moves

pytestmark = pytest.mark.integration


def test_stop_execution_mid_batch_leaves_no_policy_no_lock_and_starts_no_move_after_the_stop(
    harness: Harness,
) -> None:
    harness.seed(12, "classic", "c", messages=20)
    first = harness.cluster.nodes[0].name
    arn = harness.start({"concurrency": 1})  # one batch of 8 moves, one at a time

    def under_way() -> bool:
        """A slice marked and a leader moved, read in the real-time view: the statistics view lags by
        seconds, and a quick slice could end before it showed a move."""
        if harness.lifecycle().slices == {}:
            return False
        return sum(Queue.from_api(q).leader == first for q in harness.client.queues_now()) <= 11

    wait_until(under_way, timeout=120, what="a slice of the batch under way")

    harness.aws("stepfunctions").stop_execution(executionArn=arn, error="Operator", cause="mid-batch")
    stopped = time.time()
    assert harness.lifecycle().slices != {}, "the slice goes on after StopExecution"
    ended = harness.end_stopped(arn, "Operator", "mid-batch")
    waited = time.time() - stopped

    assert "The RunBatch slice under way stopped within" in ended["message"], ended["message"]
    assert waited < 15, f"Cleanup waited {waited:.1f} s for the slice"
    assert harness.temporary_policies() == []
    assert harness.cluster_lock() is None and harness.lock() is None
    record = harness.lifecycle()
    assert (record.state, record.outcome) == (State.IDLE, "failed: ExecutionAborted")
    assert (dict(record.slices), record.ending, record.requested) == ({}, None, None)
    moves = recorded_moves(harness, record.run_id or "")
    late = [p.move.queue for p in moves if p.started_at > stopped + CONTROL_INTERVAL + 1.0]
    assert late == [], f"moves started after the stop: {late}"
    assert 0 < len(moves) < 8 and record.counts.done == sum(1 for p in moves if p.phase.value == "done")
    assert harness.describe(arn)["status"] == "ABORTED"
