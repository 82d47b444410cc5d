"""What an operator sees from the engine and `local` commands (issue 13), run through the real entry point
(`main`, or the `queue-balancer` script in a subprocess where a pipe or a signal matters) against the
session cluster: exact exit codes and the words that tell what happened and what to do."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pika
import pytest
import requests

from queue_balancer.cli import main
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.local.layout import LAYOUT_FILE
from queue_balancer.local.seed import seed, seed_unmirrored
from queue_balancer.model import Move, QueueType
from queue_balancer.stream_transfer import NOT_SUPPORTED, StreamLeaderTransfer
from tests.conftest import wait_until
from tests.integration.conftest import Management

SCRIPT = str(Path(sys.executable).parent / "queue-balancer")


def test_dry_run_and_every_engine_report_honour_format_json(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(cluster, queues=6, messages=0, queue_type="classic")
    assert main(["balance", "--dry-run", "--format", "json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert len(planned["moves"]) == 4 and planned["before"][cluster.nodes[0].name] == 6
    assert main(["report", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["spread"] == 6
    assert main(["cleanup", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": [], "still_syncing": []}
    assert main(["report"]) == 0
    text = capsys.readouterr().out
    assert "equilibrium (least-loaded node / even share): 0%" in text
    assert "seed's" not in text and "**" not in text and "|---" not in text
    assert main(["report", "--format", "markdown"]) == 0
    assert "|---|---:|" in capsys.readouterr().out


def test_filters_that_select_nothing_are_the_same_input_error(
    cluster: LocalCluster, management: Management, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(cluster, queues=3, messages=0, queue_type="classic")
    requests.put(
        f"{management.url}/api/vhosts/{quote('empty', safe='')}",
        auth=(management.user, management.password),
        timeout=15,
    ).raise_for_status()
    assert main(["report", "--vhost", "empty"]) == 1
    assert "no queues in vhost 'empty'" in capsys.readouterr().err
    assert main(["plan", "--pattern", "^nomatch"]) == 1
    assert "no queue name matches --pattern '^nomatch'" in capsys.readouterr().err
    assert main(["balance", "--dry-run", "--pattern", "^nomatch"]) == 1
    assert "no queue name matches" in capsys.readouterr().err


def test_a_reader_that_stops_early_gets_no_traceback(cluster: LocalCluster) -> None:
    seed(cluster, queues=3, messages=0, queue_type="classic")
    env = {**os.environ, ENV_BASE_DIR: str(cluster.base_dir)}
    process = subprocess.Popen(
        [SCRIPT, "report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    assert process.stdout is not None
    process.stdout.close()  # like `| head -0`: every write to stdout meets a closed pipe
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_no_password_option_and_a_401_point_to_rabbitmq_password(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    done = subprocess.run(
        [SCRIPT, "--password", "secret", "report"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "no --password option: export RABBITMQ_PASSWORD" in done.stderr
    assert "secret" not in done.stderr
    monkeypatch.setenv("RABBITMQ_PASSWORD", "wrong")
    assert main(["report"]) == 1
    err = capsys.readouterr().err
    assert "(HTTP 401)" in err and "RABBITMQ_PASSWORD" in err and "wrong" not in err


def test_a_stopped_local_cluster_says_run_local_up(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = json.loads((cluster.base_dir / LAYOUT_FILE).read_text())
    layout["management_base"] += 50  # a layout whose nodes are not running: nothing listens there
    (tmp_path / LAYOUT_FILE).write_text(json.dumps(layout))
    monkeypatch.setenv(ENV_BASE_DIR, str(tmp_path))
    assert main(["report"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the management API" in err and "run `queue-balancer local up`" in err


def test_report_help_says_what_per_vhost_does_there() -> None:
    done = subprocess.run(
        [SCRIPT, "report", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "show the per-vhost table" in " ".join(done.stdout.split())
    assert "balance every vhost" not in done.stdout


def test_local_seed_refuses_queues_of_another_type_and_status_shows_the_endpoint(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(cluster, queues=2, messages=0, queue_type="classic", prefix="kind")
    assert (
        main(["local", "seed", "--queues", "2", "--messages", "0", "--type", "quorum", "--prefix", "kind"])
        == 1
    )
    err = capsys.readouterr().err
    assert "exist with another type than 'quorum'" in err and "kind.001 (classic)" in err
    assert main(["local", "status"]) == 0
    assert "AWS endpoint: not running (`queue-balancer local up` starts it)" in capsys.readouterr().out


def test_skipped_queues_are_listed_by_plan(
    cluster: LocalCluster, management: Management, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(cluster, queues=3, messages=0, queue_type="classic")
    seed_unmirrored(cluster, queues=1, with_messages=1, messages=5, prefix="busy")
    wait_until(
        lambda: any(q["name"] == "busy.001" and q.get("messages") == 5 for q in management.queues("/")),
        timeout=30,
        what="the statistics to count busy.001's messages",
    )
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "1 queues skipped" in out and "'busy.001' in vhost '/'" in out


def test_an_interrupt_on_a_terminal_starts_its_report_on_a_line_of_its_own(
    cluster: LocalCluster, management: Management
) -> None:
    """On a terminal the progress bar has no newline; Ctrl-C's report must not be glued to it. It says
    what happened to each queue the run touched, and that is where the queue is: moved to the target,
    rolled back to the source, or stayed on the node it names."""
    seed(cluster, queues=6, messages=2000, queue_type="classic")
    master, slave = pty.openpty()
    env = {**os.environ, ENV_BASE_DIR: str(cluster.base_dir)}
    process = subprocess.Popen(
        [SCRIPT, "balance", "--concurrency", "1"], stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    seen = b""

    def read_some() -> bytes:
        nonlocal seen
        if select.select([master], [], [], 0.2)[0]:
            with contextlib.suppress(OSError):  # EIO once the process has closed the terminal
                seen += os.read(master, 4096)
        return seen

    try:
        wait_until(lambda: b"] 1/" in read_some(), timeout=120, what="the progress bar after a first move")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        read = -1
        while read < len(seen):  # everything the process wrote before it closed the terminal
            read = len(seen)
            read_some()
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    assert process.returncode == 130, seen.decode(errors="replace")[-2000:]
    bar, report = seen.decode(errors="replace").split("queue-balancer: interrupted", 1)
    assert bar.endswith("\n"), repr(bar[-80:])  # its own line, not glued to the bar
    fates = re.findall(r"^  '([^']+)' in vhost '/' \((\S+) -> (\S+)\): (.+?)\r?$", report, re.MULTILINE)
    assert any(fate == "moved" for *_, fate in fates), report  # the first move, finished before Ctrl-C
    leaders = {q["name"]: q["node"] for q in management.queues("/")}
    for name, source, target, fate in fates:
        stayed = re.search(r"stayed on (\S+?)(;|$)", fate)
        where = target if fate == "moved" else source if "rolled back" in fate else stayed and stayed[1]
        assert leaders[name] == where, f"{name}: {fate!r}, but led by {leaders[name]}"


def test_move_streams_on_3_10_skips_streams_with_a_reason_and_the_eval_changes_nothing(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Debian's 3.10.8 has streams but no rabbit_stream_queue:transfer_leadership/2 (3.12+): the plan says so,
    and the node-side check answers without restarting the stream."""
    node_one = cluster.nodes[0]
    params = pika.ConnectionParameters(
        "127.0.0.1", node_one.amqp_port, "/", pika.PlainCredentials(*cluster.credentials)
    )
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        for name in ("st.0", "st.1"):
            arguments = {"x-queue-type": "stream", "x-queue-leader-locator": "client-local"}
            channel.queue_declare(name, durable=True, arguments=arguments)
    assert main(["plan", "--move-streams", "--format", "json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    reasons = {s["reason"] for s in planned["skipped"] if s["queue"].startswith("st.")}
    assert len(
        reasons
    ) == 1 and "RabbitMQ 3.10.8, which has no rabbit_stream_queue:transfer_leadership/2" in (reasons.pop())
    assert not planned["moves"]
    move = Move("/", "st.0", QueueType.STREAM, node_one.name, cluster.nodes[1].name)
    answer = StreamLeaderTransfer(cluster.eval_erlang).transfer_streams([move])[move.ref]
    assert (answer.attempts, answer.result) == (0, NOT_SUPPORTED)
