"""A closed traffic gate is a skipped run, not a failure (issue 8): the real ASL on the local endpoint,
a real publisher on the session cluster, and the operator's view through ``queue_balancer.cli``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pika
import pytest

from queue_balancer.cli import main
from queue_balancer.lifecycle import State
from queue_balancer.local import endpoint as local_endpoint
from tests.conftest import wait_until
from tests.statemachine.conftest import Harness

pytestmark = pytest.mark.integration


@pytest.fixture
def publishing(harness: Harness) -> Iterator[Harness]:
    """A publisher on a queue of its own until the test ends, and the overview showing its rate."""
    harness.seed(1, "classic", "gate", messages=0)
    user, password = harness.cluster.credentials
    params = pika.ConnectionParameters(
        "127.0.0.1", harness.cluster.nodes[0].amqp_port, "/", pika.PlainCredentials(user, password)
    )
    done = threading.Event()

    def publish() -> None:
        with pika.BlockingConnection(params) as connection:
            channel = connection.channel()
            while not done.wait(0.02):
                channel.basic_publish("", "gate.0", b"x")

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        wait_until(
            lambda: (
                float(
                    (harness.client.overview().get("message_stats") or {})
                    .get("publish_details", {})
                    .get("rate")
                    or 0
                )
                > 0
            ),
            timeout=60,
            what="a publish rate in the overview",
        )
        yield harness
    finally:
        done.set()
        thread.join(timeout=30)


def test_a_closed_traffic_gate_skips_the_run_notifies_why_and_releases_the_lock(
    publishing: Harness, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    harness = publishing
    done = harness.finished(harness.start({"action": "balance", "max_publish_rate": 0, "poll_seconds": 1}))

    assert done["status"] == "SUCCEEDED", done.get("cause")  # not counted by the FailedRuns alarm
    assert harness.lock() is None
    record = harness.lifecycle()
    assert record.state is State.IDLE
    assert record.outcome.startswith("skipped: traffic gate closed: publish rate ")
    assert record.outcome.endswith("is above 0/s")
    [note] = harness.notifications()
    assert "skipped" in note["subject"]
    assert "skipped: traffic gate closed: publish rate" in note["message"]
    assert harness.temporary_policies() == []

    monkeypatch.setattr(local_endpoint, "local_outputs", lambda base_dir: harness.outputs)
    assert main(["info"]) == 0
    assert "skipped: traffic gate closed" in capsys.readouterr().out
    assert main(["last-report"]) == 0
    assert "skipped: traffic gate closed" in capsys.readouterr().out
