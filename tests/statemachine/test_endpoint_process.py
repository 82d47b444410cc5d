"""The endpoint as `queue-balancer local up` runs it: a detached process next to the cluster's files,
reached by the workflow commands with `--local`, stopped by `local down`. Needs no RabbitMQ: the input
is refused before anything talks to the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from queue_balancer.cli import build_parser, main, workflow
from queue_balancer.cli.exit_codes import EXIT_ERROR, EXIT_NOT_RUNNING, EXIT_OK
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalClusterConfig
from queue_balancer.local.commands import register as register_local
from queue_balancer.local.endpoint import (
    ENDPOINT_FILE,
    LOG_FILE,
    PID_FILE,
    LocalEndpointError,
    Outputs,
    endpoint_url,
    local_outputs,
    start_endpoint,
    stop_endpoint,
)
from tests.conftest import wait_until
from tests.statemachine.conftest import free_port

SECRET = "s3cret-not-for-logs"
SCRIPT = str(Path(sys.executable).parent / "queue-balancer")


def test_a_detached_endpoint_serves_the_workflow_commands_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = LocalClusterConfig(
        base_dir=tmp_path,
        node_prefix="ept",
        password=SECRET,
        amqp_base=5841,
        management_base=15841,
        dist_base=25841,
        epmd_port=4841,
    )
    port = free_port()
    pid = None
    try:
        outputs = start_endpoint(tmp_path, port, config)
        pid = int((tmp_path / PID_FILE).read_text())
        assert start_endpoint(tmp_path, port, config) == outputs  # idempotent: the same endpoint
        assert endpoint_url(tmp_path) == f"http://127.0.0.1:{port}"

        sfn = _client(outputs, "stepfunctions")
        arn = sfn.start_execution(
            stateMachineArn=outputs.StateMachineArn, input=json.dumps({"action": "nope"})
        )["executionArn"]
        failed = wait_until(
            lambda: d if (d := sfn.describe_execution(executionArn=arn))["status"] != "RUNNING" else None,
            timeout=30,
            what="the invalid execution to fail",
        )
        assert (failed["status"], failed["error"]) == ("FAILED", "InvalidInput")  # handler ran in the child

        monkeypatch.setenv(ENV_BASE_DIR, str(tmp_path))
        assert main(["local", "status"]) == EXIT_NOT_RUNNING  # no node here, but the endpoint runs
        assert f"AWS endpoint: {outputs.EndpointUrl} (running)" in capsys.readouterr().out
        assert main(["status", "--local"]) == EXIT_OK
        assert "cluster local: IDLE" in capsys.readouterr().out
        assert main(["go"]) == EXIT_ERROR
        assert "cannot go: the balancer is IDLE" in capsys.readouterr().err
        assert main(["run", "--concurrency", "0"]) == EXIT_ERROR
        assert "concurrency must be between 1 and 40" in capsys.readouterr().err
        assert main(["enable"]) == EXIT_OK
        assert "ENABLED" in capsys.readouterr().out
        assert main(["disable"]) == EXIT_OK
        assert main(["last-report"]) == EXIT_ERROR
        assert "no report" in capsys.readouterr().err
        _a_reader_that_stops_early_loses_nothing(outputs, tmp_path, capsys)
        assert SECRET not in (tmp_path / LOG_FILE).read_text()
    finally:
        stopped = stop_endpoint(tmp_path)
    assert stopped
    assert pid is not None and not Path(f"/proc/{pid}").exists()  # stopped and reaped
    assert not (tmp_path / PID_FILE).exists() and not (tmp_path / ENDPOINT_FILE).exists()
    with pytest.raises(LocalEndpointError, match="queue-balancer local up"):
        local_outputs(tmp_path)
    assert not stop_endpoint(tmp_path)  # idempotent


def _a_reader_that_stops_early_loses_nothing(
    outputs: Outputs, base_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status | head -1`, `notifications --consume | head -3`: the real script with its stdout closed
    before it writes gets no traceback, and a notification it could not print is not deleted."""
    sns = _client(outputs, "sns")
    for n in (1, 2):
        sns.publish(TopicArn=outputs.NotificationTopicArn, Subject=f"note {n}", Message=f"message {n}")
    env = {**os.environ, ENV_BASE_DIR: str(base_dir)}
    for command in (["status"], ["notifications", "--consume"]):
        process = subprocess.Popen(
            [SCRIPT, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
        )
        assert process.stdout is not None
        process.stdout.close()  # the reader went away before the first line
        _, err = process.communicate(timeout=60)
        assert (process.returncode, err) == (EXIT_OK, ""), command
    assert main(["notifications", "--consume", "--format", "json"]) == EXIT_OK
    assert sorted(n["subject"] for n in json.loads(capsys.readouterr().out)) == ["note 1", "note 2"]
    assert main(["notifications"]) == EXIT_OK
    assert "0 notification(s)" in capsys.readouterr().out  # printed in full, then consumed


def _client(outputs: Outputs, service: str) -> Any:
    session: Any = boto3.Session(
        region_name=outputs.Region, aws_access_key_id="local", aws_secret_access_key="local"
    )
    return session.client(service, endpoint_url=outputs.EndpointUrl)


def test_the_workflow_commands_fit_the_main_cli_next_to_the_others() -> None:
    parser = build_parser([register_local, workflow.register])
    args = parser.parse_args(["run", "--concurrency", "4", "--vhost", "a", "--per-vhost", "--stack", "qb"])
    assert (args.func, args.event, args.concurrency, args.stack) == (workflow.cmd_event, "run", 4, "qb")
    assert parser.parse_args(["report-run", "--local"]).func is workflow.cmd_last_report
    for command in (
        "load",
        "go",
        "pause",
        "continue",
        "stop",
        "reset",
        "info",
        "status",
        "enable",
        "disable",
    ):
        with pytest.raises(SystemExit) as shown:
            parser.parse_args([command, "--help"])
        assert shown.value.code == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["go", "--stack", "a", "--local"])  # one target or the other


@pytest.fixture(autouse=True)
def _no_aws_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands must not need (or find) real AWS credentials for the local endpoint."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
