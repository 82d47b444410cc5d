"""A password never shows in the repr of anything that holds one (logs and tracebacks print reprs)."""

from __future__ import annotations

from pathlib import Path

from queue_balancer.counts import AmqpCounter
from queue_balancer.local.commands import LocalSettings
from queue_balancer.local.layout import LocalClusterConfig
from queue_balancer.local.seed_target import SeedEndpoint, SeedTarget
from queue_balancer.lock import ClusterLock
from queue_balancer.management import ManagementClient

SECRET = "s3cr3t-pa55"


def test_no_repr_shows_the_password(tmp_path: Path) -> None:
    client = ManagementClient("http://127.0.0.1:1", "admin", SECRET)
    holders: list[object] = [
        client,
        client.fork(),
        AmqpCounter("127.0.0.1", 5672, "admin", SECRET),
        LocalSettings("admin", SECRET),
        LocalClusterConfig(base_dir=tmp_path, password=SECRET),
        SeedTarget("http://127.0.0.1:1", "admin", SECRET),
        SeedEndpoint(client, None, ("a",), "a", "127.0.0.1", 5672, "admin", SECRET),
        ClusterLock(client, "owner", "run"),
    ]
    for holder in holders:
        assert SECRET not in repr(holder), type(holder).__name__
