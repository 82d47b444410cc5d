"""What a move needs from the cluster, as small protocols: the unit tier swaps in in-memory fakes.

``ManagementApi`` is the part of the management HTTP API a move uses (``management.ManagementClient``
implements it); ``LeaderTransfer`` moves quorum leaders exactly (``leader_transfer``); ``MessageCounter``
answers exact, current message counts (``counts``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from queue_balancer.model import Move, QueueCount, QueueRef
from queue_balancer.stream_transfer import StreamAnswer


class ManagementApi(Protocol):
    """The management API calls a move makes; every call raises ``ManagementError``/``NotFound``."""

    def nodes(self) -> list[dict[str, Any]]: ...

    def queue(self, vhost: str, name: str) -> dict[str, Any]:
        """One queue from the statistics view (counts, rates, policy; a few seconds late)."""
        ...

    def queue_now(self, vhost: str, name: str) -> dict[str, Any]:
        """One queue as its process sees it now (leader, mirrors in age order, sync state)."""
        ...

    def queues_now(self, vhost: str | None = None) -> list[dict[str, Any]]:
        """Every queue (of ``vhost``) as its process sees it now, in one call."""
        ...

    def queue_action(self, vhost: str, name: str, action: str) -> None: ...

    def policies(self, vhost: str | None = None) -> list[dict[str, Any]]: ...

    def policy(self, vhost: str, name: str) -> dict[str, Any]: ...

    def put_policy(
        self,
        vhost: str,
        name: str,
        *,
        pattern: str,
        definition: Mapping[str, Any],
        priority: int,
        apply_to: str = "queues",
    ) -> None: ...

    def delete_policy(self, vhost: str, name: str) -> bool:
        """False when the policy was already gone."""
        ...


class LeaderTransfer(Protocol):
    """Moves quorum leaders exactly (see ``leader_transfer``)."""

    def transfer(self, moves: Sequence[Move]) -> dict[QueueRef, str]: ...


class StreamTransfer(Protocol):
    """Restarts streams with a preferred leader, a bounded number of times each (see ``stream_transfer``)."""

    def transfer_streams(self, moves: Sequence[Move]) -> Mapping[QueueRef, StreamAnswer]: ...


class MessageCounter(Protocol):
    """Exact, current message counts (see ``counts``); without one the statistics view has to do."""

    def message_counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, QueueCount | None]: ...
