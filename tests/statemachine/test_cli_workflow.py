"""What an operator sees from the workflow commands (issue 13): the real `queue-balancer` entry point
(`main`) against the real ASL on the local endpoint and the session cluster, with exact exit codes and the
words that say what happened and what to do. Only the discovery of the endpoint is pointed at the test's."""

from __future__ import annotations

import _thread
import json
import re
import threading
from typing import Any

import pytest

from queue_balancer.cli import main
from queue_balancer.local.seed import seed_unmirrored
from tests.conftest import wait_until
from tests.statemachine.conftest import Harness

pytestmark = pytest.mark.integration

FAST = ["--poll-seconds", "1"]


def test_an_unknown_vhost_is_an_input_error_everywhere(
    cli: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.seed(3, "classic", "c")
    assert main(["load", "--vhost", "nope", *FAST]) == 1
    out, err = capsys.readouterr()
    assert "READY" not in out and "no queues in vhost 'nope'" in err
    assert main(["run", "--vhost", "nope", "--wait", *FAST]) == 1
    out, err = capsys.readouterr()
    assert "failed: InvalidInput" in err and "no queues in vhost 'nope'" in err
    # Refused once the run reads the cluster under its locks; its Cleanup gave both back.
    assert cli.lock() is None and cli.cluster_lock() is None and cli.temporary_policies() == []
    assert main(["status"]) == 0
    assert "no queues in vhost 'nope'" in capsys.readouterr().out
    assert main(["info", "--format", "json"]) == 0
    assert "no queues in vhost 'nope'" in json.loads(capsys.readouterr().out)["reason"]
    assert main(["last-report"]) == 0
    assert "failed: InvalidInput: no queues in vhost 'nope'" in capsys.readouterr().out


def test_a_run_reports_as_text_or_json_and_status_lists_what_it_skipped(
    cli: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.seed(4, "quorum", "q")
    seed_unmirrored(cli.cluster, queues=1, with_messages=1, messages=1, prefix="solo")  # unmovable
    wait_until(lambda: cli.client.queue("/", "solo.001").get("messages") == 1, timeout=30, what="its message")
    assert main(["run", "--concurrency", "4", "--wait", *FAST]) == 0
    out = capsys.readouterr().out
    assert "Leaders per node, before -> after" in out and "**" not in out and "|---" not in out
    assert main(["last-report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped_count"] == 1 and report["skipped"][0]["queue"] == "solo.001"
    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "1 skipped" in status and "'solo.001' in vhost '/'" in status
    assert main(["status", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    assert main(["last-report", "--format", "markdown"]) == 0
    assert "|---" in capsys.readouterr().out

    # notifications: a peek by default, the same messages again; --consume deletes what it printed
    for _ in range(2):
        assert main(["notifications"]) == 0
        assert "1 notification(s)" in capsys.readouterr().out
    assert main(["notifications", "--consume", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["notifications"]) == 0
    assert "0 notification(s)" in capsys.readouterr().out


def test_load_with_new_options_while_ready_is_refused_clearly(
    cli: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.seed(3, "quorum", "q")
    assert main(["load", "--concurrency", "2", *FAST]) == 0
    assert "the run waits in READY: `queue-balancer go` goes on" in capsys.readouterr().out
    assert main(["load", "--concurrency", "3", "--max-moves", "3"]) == 1
    err = capsys.readouterr().err
    assert (
        "cannot load with new options" in err and "concurrency=2" in err and "`queue-balancer reset`" in err
    )
    assert main(["load"]) == 0  # without options: re-plans with the run's own
    assert "re-planning" in capsys.readouterr().out


def test_ctrl_c_on_run_wait_says_the_run_goes_on(cli: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    cli.seed(6, "classic", "c", messages=200)

    def interrupt_once_started() -> None:
        # As soon as the run is under way, not once BALANCING: a loaded machine polls the state slower
        # than six small moves take, and Ctrl-C after the run's end would prove nothing.
        wait_until(lambda: cli.lifecycle().active, timeout=60, what="the run under way")
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    assert main(["run", "--wait", *FAST]) == 130
    err = capsys.readouterr().err
    assert "the run goes on in the workflow" in err and "`queue-balancer stop`" in err
    assert "rolled back" not in err
    assert cli.lifecycle().active  # it really goes on
    wait_until(lambda: not cli.lifecycle().active, timeout=120, what="the run to end")
    assert cli.lifecycle().outcome == "completed"


def test_status_follows_a_batch_move_by_move_and_lists_the_queues_the_plan_skips(
    cli: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.seed(9, "classic", "c", messages=500)  # 6 moves in one batch, one at a time
    seed_unmirrored(cli.cluster, queues=1, with_messages=1, messages=1, prefix="solo")  # unmovable
    wait_until(lambda: cli.client.queue("/", "solo.001").get("messages") == 1, timeout=30, what="its message")
    assert main(["run", "--concurrency", "1", *FAST]) == 0
    capsys.readouterr()

    def mid_batch() -> tuple[dict[str, Any], str] | None:
        assert main(["status", "--format", "json"]) == 0
        data = json.loads(_printed(capsys))
        assert main(["status"]) == 0
        text = _printed(capsys)
        batch = data["batch"] or {}
        halfway = data["state"] == "BALANCING" and 0 < batch.get("done", 0) < batch.get("moves", 0)
        return (data, text) if halfway and "moves done" in text else None

    data, text = wait_until(mid_batch, timeout=120, what="status inside a batch, some moves done")
    batch = data["batch"]
    assert (batch["number"], batch["of"], batch["moves"]) == (1, 1, 6)
    assert data["done"] + data["failed"] + data["pending"] == 6  # the run's counts move with the batch
    assert data["skipped"] == 1 and [s["queue"] for s in data["skipped_queues"]] == ["solo.001"]
    assert re.search(r"BALANCING - \d pending, [1-5] done, 0 failed, 1 skipped", text), text
    assert re.search(r"batch 1 of 1: [1-5] of 6 moves done", text), text
    assert "skipped (1): these queues stay where they are" in text and "'solo.001' in vhost '/'" in text
    wait_until(lambda: not cli.lifecycle().active, timeout=120, what="the run to end")
    assert main(["last-report", "--format", "json"]) == 0
    report = json.loads(_printed(capsys))
    assert (report["moves_done"], report["skipped"]) == (6, data["skipped_queues"])  # the same reasons
    assert main(["status", "--format", "json"]) == 0
    ended = json.loads(_printed(capsys))
    assert (ended["done"], ended["pending"], ended["batch"]) == (6, 0, None)


def _printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed, without the one-line JSON logs and metrics of the handlers running in
    this process meanwhile (the command's own JSON is indented: its first line is a lone brace)."""
    lines = capsys.readouterr().out.splitlines()
    return "\n".join(line for line in lines if not line.startswith('{"'))
