"""The management client fails over to another node's API when the one it talks to goes away."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from queue_balancer.errors import ManagementError
from queue_balancer.management import ManagementClient


class Session(requests.Session):
    """Refuses connections to ``down`` URLs; answers ``[]`` everywhere else."""

    def __init__(self, down: set[str]) -> None:
        super().__init__()
        self.down = down
        self.asked: list[str] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.asked.append(str(url))
        if any(str(url).startswith(d) for d in self.down):
            raise requests.ConnectionError("Connection refused")
        response = requests.Response()
        response.status_code, response._content = 200, b"[]"
        return response


def test_a_node_gone_is_replaced_by_the_next_one() -> None:
    session = Session({"http://one"})
    client = ManagementClient(
        "http://one", "u", "secret", session=session, fallbacks=["http://two"], backoff=0
    )
    assert client.nodes() == []
    assert session.asked == ["http://one/api/nodes", "http://two/api/nodes"]
    assert client.base_url == "http://two"  # and it stays there


def test_every_node_gone_is_one_error_naming_the_endpoint_and_no_password() -> None:
    session = Session({"http://one", "http://two"})
    client = ManagementClient(
        "http://one", "u", "secret", session=session, fallbacks=["http://two"], retries=1, backoff=0
    )
    with pytest.raises(ManagementError, match="cannot reach the management API") as raised:
        client.nodes()
    assert "secret" not in str(raised.value) and "secret" not in repr(client)
