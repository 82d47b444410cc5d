"""Malformed input is one line of error, never a traceback: CLI options and snapshot files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from queue_balancer.cli import build_parser
from queue_balancer.cli.engine import load_snapshot
from queue_balancer.errors import ConfigurationError, ManagementError
from queue_balancer.management import ManagementClient


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout", "nan", "report"],
        ["--timeout", "1e999", "report"],
        ["--timeout", "-1", "report"],
        ["--amqp-port", "70000", "report"],
        ["balance", "--rounds", "0"],
        ["balance", "--max-moves", "-1"],
        ["plan", "--max-moves", "x"],
    ],
)
def test_a_bad_option_value_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 1  # an input error, as everywhere (2 means "some moves failed")
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"nodes": [], "queues": [{"vhost": "/", "name": "q", "messages": 1e999}]}', "out of range"),
        ('{"nodes": [], "queues": [{"vhost": "/", "name": "q", "messages": NaN}]}', "NaN is not a number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"nodes": [1], "queues": []}', "TypeError"),
        ('{"nodes": [], "queues": ["q"]}', "Error"),
        ('{"nodes": []}', "KeyError"),
        ("[]", "TypeError"),
        ("not json", "JSONDecodeError"),
    ],
)
def test_a_malformed_snapshot_is_one_line_of_error(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=reason) as raised:
        load_snapshot(str(path))
    assert "\n" not in str(raised.value)


def test_a_well_formed_snapshot_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"nodes": [{"name": "a", "running": True}], "queues": []}))
    assert load_snapshot(str(path)).running_nodes == ("a",)


def test_a_queue_named_like_a_dot_segment_is_refused_before_any_request() -> None:
    client = ManagementClient("http://127.0.0.1:1", "u", "p", retries=0)
    with pytest.raises(ManagementError, match=r"cannot address queue '\.\.' in vhost '/'"):
        client.queue_now("/", "..")
