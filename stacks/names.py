"""The cluster's name: it names the state machine, the dashboards and tags the nodes, so both stacks check it."""

from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


def check_cluster_name(name: str) -> str:
    """The name, if it can name the state machine and tag the nodes; ValueError otherwise."""
    if not _NAME.match(name):
        raise ValueError(
            f"clusterName {name!r}: use 1-48 letters, digits, '-' or '_', starting with a letter or digit "
            "(it names the state machine and tags the nodes)"
        )
    return name
