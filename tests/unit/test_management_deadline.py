"""A write's attempts all end within its total deadline, and none is retried once the run's lock says
stop: a late policy or lock PUT must not land after another run took the cluster over."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from queue_balancer.errors import ManagementError
from queue_balancer.lock import LockLost
from queue_balancer.management import WRITE_DEADLINE_SECONDS, ManagementClient


class HangingSession(requests.Session):
    """Every call hangs until its timeout (on a fake clock), or answers ``status`` at once."""

    def __init__(self, status: int | None = None) -> None:
        super().__init__()
        self.now = 0.0
        self.status = status
        self.timeouts: list[float] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.timeouts.append(kwargs["timeout"])
        if self.status is None:
            self.now += kwargs["timeout"]
            raise requests.ReadTimeout("Read timed out")
        response = requests.Response()
        response.status_code, response._content = self.status, b"{}"
        return response


def client_on(session: HangingSession) -> ManagementClient:
    client = ManagementClient("http://one", "u", "secret", session=session)
    client.clock = lambda: session.now

    def sleep(seconds: float) -> None:
        session.now += seconds

    client.sleep = sleep
    return client


def test_a_hanging_write_ends_within_its_total_deadline() -> None:
    """Before: 4 attempts of 15 s plus backoff, 63 s, longer than half the lock's 60 s lease."""
    session = HangingSession()
    with pytest.raises(ManagementError, match=r"timed out \(write deadline 15 s\)"):
        client_on(session).put_policy("/", "p", pattern="^q$", definition={}, priority=1)
    assert session.now <= WRITE_DEADLINE_SECONDS < 60 / 2
    assert WRITE_DEADLINE_SECONDS <= 60 / 2 - 10  # the margin below half the shortest lease


def test_a_read_keeps_its_attempts() -> None:
    session = HangingSession()
    with pytest.raises(ManagementError):
        client_on(session).nodes()
    assert len(session.timeouts) == 4 and session.timeouts[-1] == 15


def test_a_given_deadline_cuts_the_call_short() -> None:
    session = HangingSession()
    with pytest.raises(ManagementError):
        client_on(session).put_global_parameter("lock", {}, deadline=0.8)
    assert session.timeouts == [0.8] and session.now == 0.8


def test_no_write_begins_or_is_retried_once_the_guard_says_the_lock_is_lost() -> None:
    session = HangingSession(status=503)
    client = client_on(session)
    checks: list[str] = []

    def lost_after_the_first_attempt() -> None:
        checks.append("check")
        if len(checks) > 1:
            raise LockLost("run r could not renew the cluster's lock for 31 s")

    client.guard = lost_after_the_first_attempt
    with pytest.raises(LockLost):
        client.delete_policy("/", "p")
    assert len(session.timeouts) == 1  # the first attempt only
    with pytest.raises(LockLost):
        client.put_policy("/", "p", pattern="^q$", definition={}, priority=1)
    assert len(session.timeouts) == 1  # not even a first attempt
    with pytest.raises(ManagementError, match="HTTP 503"):
        client.nodes()  # reads are not the guard's business: retried, never refused
    assert len(session.timeouts) == 1 + 4
