"""Where one move stands (``MoveProgress``, plain JSON) and how long each phase may take."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from queue_balancer.model import JsonDict, Move


class Phase(StrEnum):
    SYNCING = "syncing"  # waiting for the target (and every mirror kept) to be synchronised
    REORDERING = "reordering"  # re-adding a mirror older than the target, so the target is the oldest
    PROMOTING = "promoting"  # primary dropped, waiting for the target (the oldest mirror) to be promoted
    TRANSFERRING = "transferring"  # waiting for Ra to report the new quorum leader
    RESTARTING = "restarting"  # a stream restarted by its coordinator: waiting for every member and the count
    RESTORING = "restoring"  # waiting for the queue's own policy to re-mirror it
    VERIFYING = "verifying"  # waiting for the statistics to settle, then comparing message counts
    ROLLING_BACK = "rolling_back"  # every copy kept, then the queue handed back to its own policy
    DONE = "done"
    FAILED = "failed"


TERMINAL = frozenset({Phase.DONE, Phase.FAILED})


PROMOTION_AWAITED = "awaited"
PROMOTION_RACED = "raced"


@dataclass(frozen=True)
class MoveSettings:
    """Deadlines scale with the queue's size: a mirror sync copies every message (~40k msg/s)."""

    poll_interval: float = 0.1
    phase_timeout: float = 60.0
    messages_per_second: float = 5_000.0
    settle_timeout: float = 30.0
    """How long the statistics view may take to catch up (it is refreshed every 5 s by default)."""

    sync_nudge_after: float = 5.0
    """Seconds a mirror may stay unsynchronised before the mover asks for a sync itself."""
    rollback_timeout: float = 60.0
    """How long a rolled-back move waits for its own mirrors to be back in sync."""
    handback_settle: float = 3.0
    """A rollback that asked for the source again while the promotion it had asked for was not yet seen
    judges the queue no sooner than this after the hand-back: the promotion can still land then, and
    RabbitMQ can lose the hand-back to it."""

    def deadline(self, now: float, messages: int, base: float | None = None) -> float:
        return now + (self.phase_timeout if base is None else base) + messages / self.messages_per_second


@dataclass(frozen=True)
class MoveProgress:
    """Where one move stands; plain JSON in and out (``to_dict``/``from_dict``)."""

    move: Move
    phase: Phase
    started_at: float
    deadline: float
    messages_before: int = 0
    policy: str | None = None
    original_policy: str | None = None
    original_definition: Mapping[str, Any] = field(default_factory=dict)
    cluster_size: int = 0
    nudges: int = 0
    """Remedies tried in the current phase (see ``classic.nudge_sync``)."""
    phase_started_at: float = 0.0
    exact_count: bool = False
    """messages_before came from the queue process itself, so verification can ask it again."""
    finished_at: float | None = None
    outcome: str = ""
    mirrors: tuple[str, ...] = ()
    """The mirrors kept through the move (the target among them): never fewer copies than before."""
    asked: tuple[str, ...] = ()
    """The nodes the temporary policy mirrors the queue on right now (so a poll puts it only on change)."""
    attempts: int = 0
    """A stream move's restarts asked of its coordinator (``stream_transfer``): each restarts the writer."""
    offsets_verified: bool = False
    """A stream's offsets showed nothing committed was lost: its (non-monotonic) count is not judged."""
    target_synced: bool = False
    """A classic move's target was seen as a synchronised mirror: RabbitMQ may promote it without a loss."""
    target_down_readings: int = 0
    """A quorum transfer's checks in a row that found the target's node not running (one fails nothing)."""
    quiet_drop_at: float | None = None
    """When the statistics view first showed a smaller count with no client traffic (judged once it held)."""
    idle_at_start: bool | None = None
    """No consumer, no unacknowledged message and no message rate when the move began (classic moves;
    None: not known, e.g. a move under way stored before the field existed)."""
    promotion: str = ""
    """A rolled-back classic move's promotion: asked and awaited (``PROMOTION_AWAITED``), or not seen in
    time, so the source was asked back while it may still land (``PROMOTION_RACED``)."""
    handed_back_at: float | None = None
    """When the rollback deleted its temporary policy (the queue's own policy back in force)."""

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> JsonDict:
        return {
            **progress_dict(self),
            "policy": self.policy,
            "original_policy": self.original_policy,
            "original_definition": dict(self.original_definition),
            "cluster_size": self.cluster_size,
            "nudges": self.nudges,
            "phase_started_at": self.phase_started_at,
            "mirrors": list(self.mirrors),
            "asked": list(self.asked),
            "attempts": self.attempts,
            "offsets_verified": self.offsets_verified,
            "target_synced": self.target_synced,
            "target_down_readings": self.target_down_readings,
            "quiet_drop_at": self.quiet_drop_at,
            "idle_at_start": self.idle_at_start,
            "promotion": self.promotion,
            "handed_back_at": self.handed_back_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MoveProgress:
        return cls(
            move=Move.from_dict(data["move"]),
            phase=Phase(data["phase"]),
            **progress_fields(data),
            policy=data.get("policy"),
            original_policy=data.get("original_policy"),
            original_definition=dict(data.get("original_definition") or {}),
            cluster_size=int(data.get("cluster_size", 0)),
            nudges=int(data.get("nudges", 0)),
            phase_started_at=float(data.get("phase_started_at", 0.0)),
            mirrors=tuple(str(n) for n in data.get("mirrors") or ()),
            asked=tuple(str(n) for n in data.get("asked") or ()),
            attempts=int(data.get("attempts", 0)),
            offsets_verified=bool(data.get("offsets_verified", False)),
            target_synced=bool(data.get("target_synced", False)),
            target_down_readings=int(data.get("target_down_readings", 0)),
            quiet_drop_at=None if data.get("quiet_drop_at") is None else float(data["quiet_drop_at"]),
            idle_at_start=None if data.get("idle_at_start") is None else bool(data["idle_at_start"]),
            promotion=str(data.get("promotion") or ""),
            handed_back_at=None if data.get("handed_back_at") is None else float(data["handed_back_at"]),
        )


class _Dictable(Protocol):
    def to_dict(self) -> JsonDict: ...


class Progress(Protocol):
    """What a leader move's and a member change's progress share (``MoveProgress``,
    ``member_moves.MemberProgress``): the same JSON for the same fields."""

    @property
    def move(self) -> _Dictable: ...

    @property
    def phase(self) -> StrEnum: ...

    @property
    def started_at(self) -> float: ...

    @property
    def deadline(self) -> float: ...

    @property
    def messages_before(self) -> int: ...

    @property
    def exact_count(self) -> bool: ...

    @property
    def finished_at(self) -> float | None: ...

    @property
    def outcome(self) -> str: ...


def progress_dict(progress: Progress) -> JsonDict:
    """The shared fields as JSON (each kind adds its own)."""
    return {
        "move": progress.move.to_dict(),
        "phase": progress.phase.value,
        "started_at": progress.started_at,
        "deadline": progress.deadline,
        "messages_before": progress.messages_before,
        "exact_count": progress.exact_count,
        "finished_at": progress.finished_at,
        "outcome": progress.outcome,
    }


def progress_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The shared fields from ``progress_dict``'s JSON, but ``move`` and ``phase`` (each kind parses its own)."""
    return {
        "started_at": float(data["started_at"]),
        "deadline": float(data["deadline"]),
        "messages_before": int(data.get("messages_before", 0)),
        "exact_count": bool(data.get("exact_count", False)),
        "finished_at": data.get("finished_at"),
        "outcome": str(data.get("outcome", "")),
    }
