"""A small, strict client of the RabbitMQ management HTTP API.

Why not a generic client: every call here URL-encodes vhost and queue names (``/``, spaces, unicode),
retries only what is safe to retry, and turns every failure into a ManagementError that names the
method, the URL and the HTTP status, so a user can act on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests

from queue_balancer.errors import ManagementError, NotFound
from queue_balancer.maintenance import DrainedReader, with_maintenance
from queue_balancer.model import DOT_SEGMENTS, Snapshot
from queue_balancer.observe import refresh_unsettled
from queue_balancer.voters import mark_non_voters

# Columns of GET /api/queues the planner needs; asking for them keeps 10,000-queue answers small.
QUEUE_COLUMNS = (
    "vhost,name,type,node,leader,members,online,slave_nodes,synchronised_slave_nodes,messages,"
    "exclusive,state,policy,effective_policy_definition,consumers,arguments,durable,auto_delete"
)
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})
WRITE_DEADLINE_SECONDS = 15.0
"""All attempts of one write together: under half the shortest lock lease (60 s) minus a 15 s
margin, so a write issued while the run's lock was valid lands before anyone may take the lock over."""


def encode(segment: str) -> str:
    """URL-encode one path segment: vhost "/" becomes %2F, spaces and unicode are escaped."""
    return quote(segment, safe="")


def addressable(name: str) -> bool:
    """Whether the API can address an object of this name: "." and ".." are dot segments, which HTTP
    resolves away however they are encoded (RabbitMQ answers with the vhost's list, or 405)."""
    return name not in DOT_SEGMENTS


class ManagementClient:
    """Talks to one management endpoint (a node or a load balancer in front of all nodes)."""

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        *,
        timeout: float = 15.0,
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
        fallbacks: Sequence[str] = (),
        drained: DrainedReader | None = None,
        write_deadline: float = WRITE_DEADLINE_SECONDS,
    ) -> None:
        self.drained = drained
        """Where maintenance mode is read when ``/api/nodes`` does not report it (3.x): every snapshot
        marks the drained nodes, so no caller can plan onto one; without it 3.x snapshots say
        ``drain_reported=False``."""
        self.base_url = url.rstrip("/")
        self.urls = (self.base_url, *(u.rstrip("/") for u in fallbacks if u.rstrip("/") != self.base_url))
        """Every endpoint of the cluster's API this client may use: it fails over when one goes away."""
        self.user = user
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.write_deadline = write_deadline
        self.guard: Callable[[], None] | None = None
        """Called before every attempt of a write (a held lock's ``check``): raises once the run may no
        longer change the cluster, so no write lands after the lock could have been taken over."""
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep
        self._session = session or requests.Session()
        self._session.auth = (user, password)
        self._session.headers["content-type"] = "application/json"

    def fork(self) -> ManagementClient:
        """A client of its own for another thread (a requests Session is not thread-safe)."""
        user, password = self._session.auth  # type: ignore[misc]
        return ManagementClient(
            self.base_url,
            user,
            password,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            fallbacks=self.urls,
            drained=self.drained,
            write_deadline=self.write_deadline,
        )

    def __repr__(self) -> str:  # never show the password
        return f"ManagementClient({self.base_url!r}, user={self.user!r})"

    # ---- transport -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        deadline: float | None = None,
    ) -> Any:
        """One API call; retries connection errors and 5xx answers (all our writes are idempotent).

        An endpoint that cannot be reached is first replaced by the next one of ``urls`` not tried in
        this call (a node that went away), then retried with backoff. Every attempt has ``timeout``. A
        write's attempts all end within ``deadline`` seconds (``write_deadline`` unless given), and a write
        begins and is retried only while ``guard`` allows it: a late write must not land after a lock
        takeover.
        """
        write = method in WRITE_METHODS
        if write and self.guard is not None:
            self.guard()  # no write begins once the run's lock says it may no longer change the cluster
        budget = deadline if deadline is not None else self.write_deadline if write else None
        ends = None if budget is None else self.clock() + budget
        attempt = 0
        tried = set()
        while True:
            attempt += 1
            url = f"{self.base_url}/api/{path}"
            timeout = self.timeout if ends is None else max(min(self.timeout, ends - self.clock()), 0.001)
            try:
                response = self._session.request(method, url, params=params, json=body, timeout=timeout)
            except requests.RequestException as exc:
                tried.add(self.base_url)
                untried = [u for u in self.urls if u not in tried]
                if untried and self._may_retry(write, ends, 0.0):
                    self.base_url = untried[0]
                    continue
                if attempt <= self.retries and self._may_retry(write, ends, self.backoff * attempt):
                    self.sleep(self.backoff * attempt)
                    continue
                raise ManagementError(
                    f"cannot reach the management API at {self.base_url}: {_short(exc)}"
                    + (f" (write deadline {budget:g} s)" if write else ""),
                    method=method,
                    url=url,
                ) from exc
            if (
                response.status_code in RETRYABLE_STATUS
                and attempt <= self.retries
                and self._may_retry(write, ends, self.backoff * attempt)
            ):
                self.sleep(self.backoff * attempt)
                continue
            return self._decode(method, url, response)

    def _may_retry(self, write: bool, ends: float | None, pause: float) -> bool:
        """Whether another attempt may start after ``pause``: time is left before ``ends``, and for a
        write the ``guard`` (the run's lock) still allows changing the cluster (it raises otherwise)."""
        if ends is not None and self.clock() + pause >= ends:
            return False
        if write and self.guard is not None:
            self.guard()
        return True

    def _decode(self, method: str, url: str, response: requests.Response) -> Any:
        status = response.status_code
        if status < 300:
            return response.json() if response.content else None
        reason = _reason(response)
        if status == 401:
            raise ManagementError(
                f"authentication failed for user '{self.user}'", method=method, url=url, status=status
            )
        if status == 404:
            raise NotFound(f"not found: {reason}", method=method, url=url, status=status)
        raise ManagementError(
            f"management API refused the request: {reason}", method=method, url=url, status=status
        )

    def get(self, path: str, **params: str) -> Any:
        return self.request("GET", path, params=params or None)

    # ---- cluster ---------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("overview")
        return result

    def nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("nodes")
        return result

    def vhosts(self) -> list[str]:
        return [str(v["name"]) for v in self.get("vhosts", columns="name")]

    # ---- queues ----------------------------------------------------------------------------------

    def queues(self, vhost: str | None = None) -> list[dict[str, Any]]:
        """All queues from the statistics view, which lags the queues by a few seconds.

        The real-time list (``disable_stats=true``) would be fresher for leaders, but its synchronised
        mirrors come from a record that is not updated when a sync completes (seen on 3.10), so it would
        report mirrors out of sync for good. Moves re-check each queue in the real-time single-queue view.
        """
        path = "queues" if vhost is None else f"queues/{encode(vhost)}"
        result: list[dict[str, Any]] = self.get(path, columns=QUEUE_COLUMNS)
        return result

    def snapshot(self) -> Snapshot:
        """Nodes, queues and the version: what the planner needs. Queues the statistics show syncing or
        out of sync are re-read in the real-time view (``observe.refresh_unsettled``): never judged on
        stale data. On 4.x quorum members without a vote are marked (``voters.mark_non_voters``); nodes in
        maintenance mode are marked on every version (through ``drained`` on 3.x)."""
        listed = Snapshot.from_api(self.nodes(), self.queues(), self.overview())
        return mark_non_voters(self, refresh_unsettled(self, with_maintenance(listed, self.drained)))

    def queues_now(self, vhost: str | None = None) -> list[dict[str, Any]]:
        """All queues (of ``vhost``) as their processes see them now (quorum members and ``online``).

        The statistics view can list a removed quorum member (and double the count) long after a member
        change that moved the leader; the members plan reads this view instead.
        """
        path = "queues" if vhost is None else f"queues/{encode(vhost)}"
        result: list[dict[str, Any]] = self.get(path, disable_stats="true", enable_queue_totals="true")
        return result

    def members_snapshot(self) -> Snapshot:
        """Nodes and queues for the members plan: quorum queues from the real-time view, the others from
        the statistics view. The real-time list names a queue's policy but not its effective definition
        (seen on 4.0.5), where ``target-group-size`` lives: that comes from the statistics view, seconds late."""
        listed = self.queues()
        effective = {(q["vhost"], q["name"]): q.get("effective_policy_definition") for q in listed}
        quorum = [
            {"effective_policy_definition": effective.get((q["vhost"], q["name"])), **q}
            for q in self.queues_now()
            if q.get("type") == "quorum"
        ]
        others = [q for q in listed if q.get("type") != "quorum"]
        snapshot = Snapshot.from_api(self.nodes(), quorum + others, self.overview())
        return with_maintenance(snapshot, self.drained)

    def version(self) -> str:
        """RabbitMQ's version, e.g. ``3.10.8`` or ``4.0.5``."""
        return str(self.overview().get("rabbitmq_version") or "")

    def queue(self, vhost: str, name: str) -> dict[str, Any]:
        """One queue from the statistics view: message count and policy, a few seconds late."""
        self._addressable(vhost, name)
        result: dict[str, Any] = self.get(f"queues/{encode(vhost)}/{encode(name)}")
        return result

    def queue_now(self, vhost: str, name: str) -> dict[str, Any]:
        """One queue as its process sees it right now (leader, mirrors, sync state; no counts)."""
        self._addressable(vhost, name)
        result: dict[str, Any] = self.get(f"queues/{encode(vhost)}/{encode(name)}", disable_stats="true")
        return result

    def quorum_status(self, vhost: str, name: str) -> list[dict[str, Any]]:
        """A quorum queue's members as Raft sees them (``rabbit_quorum_queue:status/2``): role, log
        indexes and, from 4.0, ``Membership`` (voter, non_voter, promotable)."""
        self._addressable(vhost, name)
        result: list[dict[str, Any]] = self.get(f"queues/quorum/{encode(vhost)}/{encode(name)}/status")
        return result

    def queue_action(self, vhost: str, name: str, action: str) -> None:
        self._addressable(vhost, name)
        self.request("POST", f"queues/{encode(vhost)}/{encode(name)}/actions", body={"action": action})

    @staticmethod
    def _addressable(vhost: str, name: str) -> None:
        if not (addressable(vhost) and addressable(name)):
            raise ManagementError(
                f"the management API cannot address queue '{name}' in vhost '{vhost}': '.' and '..' are "
                "path segments HTTP resolves away"
            )

    # ---- policies --------------------------------------------------------------------------------

    def policies(self, vhost: str | None = None) -> list[dict[str, Any]]:
        path = "policies" if vhost is None else f"policies/{encode(vhost)}"
        result: list[dict[str, Any]] = self.get(path)
        return result

    def policy(self, vhost: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"policies/{encode(vhost)}/{encode(name)}")
        return result

    def put_policy(
        self,
        vhost: str,
        name: str,
        *,
        pattern: str,
        definition: Mapping[str, Any],
        priority: int,
        apply_to: str = "queues",
    ) -> None:
        body = {
            "pattern": pattern,
            "definition": dict(definition),
            "priority": priority,
            "apply-to": apply_to,
        }
        self.request("PUT", f"policies/{encode(vhost)}/{encode(name)}", body=body)

    # ---- global parameters (the cluster lock) ------------------------------------------------------

    def global_parameter(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"global-parameters/{encode(name)}")
        return result

    def put_global_parameter(
        self, name: str, value: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        """``deadline``: all attempts together (the lock's take gives what is left of its write window)."""
        self.request(
            "PUT",
            f"global-parameters/{encode(name)}",
            body={"name": name, "value": dict(value)},
            deadline=deadline,
        )

    def delete_global_parameter(self, name: str) -> bool:
        try:
            self.request("DELETE", f"global-parameters/{encode(name)}")
        except NotFound:
            return False
        return True

    def delete_policy(self, vhost: str, name: str) -> bool:
        """Delete a policy; False when it was already gone (deleting is idempotent for us)."""
        try:
            self.request("DELETE", f"policies/{encode(vhost)}/{encode(name)}")
        except NotFound:
            return False
        return True


def _reason(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or response.reason
    if isinstance(data, dict):
        return str(data.get("reason") or data.get("error") or data)
    return str(data)[:200]


def _short(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host"):
        if marker in text:
            return marker.lower()
    return text[:200]
