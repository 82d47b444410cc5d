"""Fixtures of the integration tests on top of the shared session cluster (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import pytest
import requests

from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.lock import LOCK_PARAMETER
from tests.conftest import wait_until


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration needs real nodes: mark it, so `-m "not integration"` skips it."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


class Management(NamedTuple):
    """(url, user, password) of node 1's management API, with a few helpers that encode vhosts/names."""

    url: str
    user: str
    password: str

    def get(self, path: str, **params: str) -> Any:
        response = requests.get(
            f"{self.url}/api/{path}", params=params, auth=(self.user, self.password), timeout=15
        )
        response.raise_for_status()
        return response.json()

    def delete(self, path: str) -> None:
        response = requests.delete(f"{self.url}/api/{path}", auth=(self.user, self.password), timeout=30)
        if response.status_code not in (204, 404):
            response.raise_for_status()

    def queues(self, vhost: str, **params: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(f"queues/{quote(vhost, safe='')}", **params)
        return result


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., Any]:
    """``wait_for(condition, timeout=..., what=...)``: poll with a deadline instead of sleeping."""
    return wait_until


@pytest.fixture(scope="session")
def management(local_cluster: LocalCluster) -> Management:
    """(url, user, password) of node 1's management API; also a small client for the tests."""
    user, password = local_cluster.credentials
    return Management(local_cluster.nodes[0].management_url, user, password)


@pytest.fixture
def clean_cluster(local_cluster: LocalCluster, management: Management) -> LocalCluster:
    """The session cluster with no queues, no policies, no balancer lock and only the default vhost: tests
    stay independent.

    The cluster is brought back up first, in case an earlier test stopped it.
    """
    if not all(s.running for s in local_cluster.status()):
        local_cluster.up()
    for queue in management.get("queues", columns="vhost,name"):
        management.delete(f"queues/{quote(queue['vhost'], safe='')}/{quote(queue['name'], safe='')}")
    for policy in management.get("policies"):
        management.delete(f"policies/{quote(policy['vhost'], safe='')}/{quote(policy['name'], safe='')}")
    management.delete(f"global-parameters/{LOCK_PARAMETER}")  # a killed run's, a stopped execution's
    for vhost in management.get("vhosts", columns="name"):
        if vhost["name"] != "/":
            management.delete(f"vhosts/{quote(vhost['name'], safe='')}")
    return local_cluster


@pytest.fixture
def cluster(clean_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    """The clean session cluster, reachable by the CLI's local default (``--local``) and nothing else
    (no management URL or credentials from the environment)."""
    monkeypatch.setenv(ENV_BASE_DIR, str(clean_cluster.base_dir))
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_EVAL_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    return clean_cluster
