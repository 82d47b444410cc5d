"""Add and remove quorum queue members, and read each member's Raft state: the two generations' primitives.

- RabbitMQ 3.x: the management API has no replica calls (``/api/queues/quorum/...`` answers 405), so
  ``rabbit_quorum_queue:add_member/4``, ``delete_member/3`` and ``status/2`` run through the same
  ``rabbitmqctl eval`` port as the quorum leader transfer, one call per batch (names base64-encoded).
- RabbitMQ 4.x: ``POST /api/queues/quorum/{vhost}/{name}/replicas/add`` and ``DELETE .../replicas/delete``
  (body ``{"node": ...}``) call the same Erlang functions; a new member joins as a non-voter and Ra
  promotes it to a voter once it has caught up. Member states come from
  ``GET /api/queues/quorum/{vhost}/{name}/status`` (``rabbit_quorum_queue:status/2`` again).

Both answer per (queue, node): ``ok`` or RabbitMQ's error term, so a batch never fails as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from queue_balancer.errors import BalancerError, ManagementError, NotFound
from queue_balancer.eval_document import ADD_FUN, DELETE_FUN, STATUS_FUN
from queue_balancer.leader_transfer import run_batch
from queue_balancer.management import ManagementClient, encode
from queue_balancer.model import QueueRef

OK = "ok"


class MemberChangeError(BalancerError):
    """A member change could not even be asked for (the port failed); per-queue refusals are answers."""


@dataclass(frozen=True)
class MemberState:
    """One member as Raft sees it: its role, whether it votes, and how far its log has come."""

    node: str
    raft_state: str
    """leader, follower, candidate, promotable / non_voter (4.x, catching up), or an error such as noproc."""
    commit_index: int | None
    log_index: int | None = None
    """The last entry in its log: a new member has caught up once it reaches the leader's commit index."""
    voter: bool = True

    @property
    def serving(self) -> bool:
        return self.raft_state in ("leader", "follower") and self.voter

    @classmethod
    def from_status(cls, entry: Mapping[str, Any]) -> MemberState:
        """From one element of ``rabbit_quorum_queue:status/2`` (3.10 and 4.x key names)."""
        commit = entry.get("Commit Index")
        last = entry.get("Log Index", entry.get("Last Log Index"))  # 3.x, 4.x
        membership = str(entry.get("Membership") or "voter")
        return cls(
            node=str(entry.get("Node Name", "")),
            raft_state=str(entry.get("Raft State", "")),
            commit_index=commit if isinstance(commit, int) else None,
            log_index=last if isinstance(last, int) else None,
            voter=membership == "voter",
        )


Change = tuple[QueueRef, str]
"""(queue, node)"""


class MemberChanger(Protocol):
    """Adds/removes quorum members and reads their Raft state (see the module docstring)."""

    def add(self, changes: Sequence[Change]) -> dict[Change, str]: ...

    def remove(self, changes: Sequence[Change]) -> dict[Change, str]: ...

    def status(self, refs: Sequence[QueueRef]) -> dict[QueueRef, list[MemberState] | str]: ...


@dataclass(frozen=True)
class EvalMemberChanger:
    """RabbitMQ 3.x: ``rabbit_quorum_queue`` through ``rabbitmqctl eval``, one call per batch."""

    run_eval: Callable[[str], str]

    def add(self, changes: Sequence[Change]) -> dict[Change, str]:
        return self._change(ADD_FUN, changes)

    def remove(self, changes: Sequence[Change]) -> dict[Change, str]:
        return self._change(DELETE_FUN, changes)

    def status(self, refs: Sequence[QueueRef]) -> dict[QueueRef, list[MemberState] | str]:
        answers = self._call(STATUS_FUN, [(r.vhost, r.name, "") for r in refs])
        return {QueueRef(a["vhost"], a["queue"]): _states(a["result"]) for a in answers}

    def _change(self, fun: str, changes: Sequence[Change]) -> dict[Change, str]:
        answers = self._call(fun, [(ref.vhost, ref.name, node) for ref, node in changes])
        return {(QueueRef(a["vhost"], a["queue"]), str(a["node"])): str(a["result"]) for a in answers}

    def _call(self, fun: str, items: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
        try:
            return run_batch(self.run_eval, fun, items)
        except BalancerError as exc:
            raise MemberChangeError(f"quorum member change through rabbitmqctl eval failed: {exc}") from exc


@dataclass(frozen=True)
class HttpMemberChanger:
    """RabbitMQ 4.x: the management API's quorum replica endpoints."""

    client: ManagementClient

    def add(self, changes: Sequence[Change]) -> dict[Change, str]:
        return {c: self._send("POST", c, "add") for c in changes}

    def remove(self, changes: Sequence[Change]) -> dict[Change, str]:
        return {c: self._send("DELETE", c, "delete") for c in changes}

    def status(self, refs: Sequence[QueueRef]) -> dict[QueueRef, list[MemberState] | str]:
        result: dict[QueueRef, list[MemberState] | str] = {}
        for ref in refs:
            try:
                result[ref] = _states(self.client.quorum_status(ref.vhost, ref.name))
            except NotFound:
                result[ref] = "{error,not_found}"
            except ManagementError as exc:
                result[ref] = str(exc)
        return result

    def _send(self, method: str, change: Change, action: str) -> str:
        ref, node = change
        path = f"queues/quorum/{encode(ref.vhost)}/{encode(ref.name)}/replicas/{action}"
        try:
            self.client.request(method, path, body={"node": node})
        except NotFound:
            return "{error,not_found}"
        except ManagementError as exc:
            if exc.status == 405:
                raise MemberChangeError(
                    f"{method} {path} answered 405: this RabbitMQ has no replica endpoints (3.x: give "
                    "--eval-command) or they are disabled (management.restrictions.quorum_queue_replica_operations)"
                ) from exc
            return str(exc)
        return OK


def member_changer(client: ManagementClient, run_eval: Callable[[str], str] | None) -> MemberChanger | None:
    """The primitive for this cluster's generation: HTTP from RabbitMQ 4, else the eval port (None when
    there is none: member changes then cannot be made)."""
    major = client.version().split(".", 1)[0]
    if major.isdigit() and int(major) >= 4:
        return HttpMemberChanger(client)
    return EvalMemberChanger(run_eval) if run_eval is not None else None


def succeeded(answer: str) -> bool:
    """What ``add_member``/``delete_member`` answer when the member is (or already was) where we want it."""
    return answer == OK or answer.startswith("{ok,")


def _states(result: Any) -> list[MemberState] | str:
    if isinstance(result, list):
        return [MemberState.from_status(entry) for entry in result if isinstance(entry, Mapping)]
    return str(result)
