"""A node's user data: its settings and ``node_bootstrap.sh``, which joins it to the cluster at first boot.

The script does the node's whole life (bootstrap, metrics, the termination hook's drain and forget);
the user data only installs it with its settings and runs it once.
"""

from __future__ import annotations

import base64
import gzip
import re
from collections.abc import Mapping
from pathlib import Path

from aws_cdk import Token
from aws_cdk import aws_ec2 as ec2

BOOTSTRAP_SCRIPT = Path(__file__).resolve().parent / "node_bootstrap.sh"
USER_DATA_LIMIT = 16 * 1024  # EC2 rejects larger user data (before base64)
# A line that is only a comment ("# ..." or "#"): none of the script's heredocs or quoted strings has one
# (their comments are "## ..."), so dropping them changes no function (tests/infra/test_node_bootstrap.py).
_COMMENT_LINE = re.compile(r"^[ \t]*#( .*)?\n", re.MULTILINE)


def node_settings(values: Mapping[str, str]) -> list[str]:
    """Shell assignments for /etc/rabbitmq-node.env (values may be CDK tokens, resolved at deploy)."""
    lines = []
    for key, value in values.items():
        if not Token.is_unresolved(value) and ("'" in value or "\n" in value):
            raise ValueError(f"node setting {key} must not contain quotes or newlines: {value!r}")
        lines.append(f"{key}='{value}'")
    return lines


def without_comment_lines(text: str) -> str:
    """The script as a node runs it: its comment lines are for readers of the repository, not for EC2."""
    return _COMMENT_LINE.sub("", text)


def packed_script(text: str) -> list[str]:
    """``text`` without its comment lines, gzipped (deterministically: no timestamp) and base64-encoded in
    lines of 76 characters."""
    encoded = base64.b64encode(gzip.compress(without_comment_lines(text).encode(), mtime=0)).decode()
    return [encoded[i : i + 76] for i in range(0, len(encoded), 76)]


def add_node_bootstrap(
    user_data: ec2.UserData, settings: Mapping[str, str], script: str | None = None
) -> None:
    """Install node_bootstrap.sh as rabbitmq-node with its settings, then run it once (at first boot).

    The script travels without its comment lines, gzipped and base64-encoded (``packed_script``): as text
    it outgrew EC2's 16 KB.
    """
    body = script if script is not None else BOOTSTRAP_SCRIPT.read_text()
    user_data.add_commands(
        "set -euo pipefail",
        "cat > /etc/rabbitmq-node.env <<'RABBITMQ_NODE_SETTINGS'",
        *node_settings(settings),
        "RABBITMQ_NODE_SETTINGS",
        "chmod 0644 /etc/rabbitmq-node.env",
        "base64 -d <<'RABBITMQ_NODE_SCRIPT' | gunzip > /usr/local/sbin/rabbitmq-node",
        *packed_script(body),
        "RABBITMQ_NODE_SCRIPT",
        "chmod 0755 /usr/local/sbin/rabbitmq-node",
        "exec /usr/local/sbin/rabbitmq-node bootstrap",
    )
