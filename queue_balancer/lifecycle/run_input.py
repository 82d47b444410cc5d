"""The workflow's input: what an execution may be started with, validated in one place."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from queue_balancer.errors import ConfigurationError
from queue_balancer.members import MembersOptions
from queue_balancer.model import JsonDict
from queue_balancer.planner import PlanOptions

ACTIONS = ("balance", "load")
MAX_CONCURRENCY = 40
DEFAULT_CONCURRENCY = 8
"""The CLI's ``--concurrency`` default: the same engine, the same default."""
DEFAULT_BATCH = 100
MAX_BATCH = 500
MAX_ROUNDS = 10
MAX_GROUP_SIZE = 99
DEFAULT_POLL_SECONDS = 2
MAX_POLL_SECONDS = 3
"""The Wait between two slices of a long sync: a request is seen at the next slice, which rolls the long
syncs back at once, so pause, stop and reset take effect within this plus a rollback and a few states
(about 3.5 s at the default 2; 3 saves a third of the history of a long sync)."""
IGNORED_FIELDS = frozenset({"Comment"})
"""The Step Functions console pre-fills ``{"Comment": "Insert your JSON here"}``: that starts a balance."""


@dataclass(frozen=True)
class RunInput:
    """The input of an execution (EventBridge sends ``{"action": "balance"}``), validated in one place.

    ``concurrency`` is how many classic moves run at once (quorum transfers go in batches, as in the CLI);
    ``batch_size`` moves are stored and recorded together (pause/stop/reset take effect within seconds
    inside a batch too); ``rounds`` bounds verify-and-replan; ``poll_seconds`` is the wait between two
    slices of a long mirror sync; the rates (messages per second, cluster-wide) gate the run on low
    traffic, as the seed asks. ``members`` balances quorum queue members (replicas) instead of leaders,
    as ``balance --members`` does: ``group_size``, when given, is the replica count of every selected
    queue (larger ones shrink; without it none does), ``exclude_nodes`` the nodes that must hold no members.
    """

    action: str = "balance"
    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = DEFAULT_BATCH
    rounds: int = 3
    vhosts: tuple[str, ...] = ()
    pattern: str | None = None
    per_vhost: bool = False
    max_moves: int | None = None
    max_publish_rate: float | None = None
    max_deliver_rate: float | None = None
    poll_seconds: int = DEFAULT_POLL_SECONDS
    members: bool = False
    group_size: int | None = None
    exclude_nodes: tuple[str, ...] = ()
    move_streams: bool = False
    """Stream leaders moved too, best effort (``--move-streams``); off by default."""

    @classmethod
    def parse(cls, data: Any) -> RunInput:
        """Validate an execution input; raises ConfigurationError naming every problem found."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"the input must be a JSON object, not {type(data).__name__}")
        problems: list[str] = []
        unknown = sorted(set(data) - _INPUT_FIELDS - IGNORED_FIELDS)
        if unknown:
            problems.append(
                f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_INPUT_FIELDS))})"
            )
        action = data.get("action", "balance")
        if action not in ACTIONS:
            problems.append(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
        concurrency = _integer(data, "concurrency", DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY, problems)
        batch_default = max(DEFAULT_BATCH, concurrency)
        batch_size = _integer(data, "batch_size", batch_default, 1, MAX_BATCH, problems)
        rounds = _integer(data, "rounds", 3, 1, MAX_ROUNDS, problems)
        max_moves = data.get("max_moves")
        if max_moves is not None:
            max_moves = _integer(data, "max_moves", 0, 0, 10**9, problems)
        poll = _integer(data, "poll_seconds", DEFAULT_POLL_SECONDS, 1, MAX_POLL_SECONDS, problems)
        vhosts = data.get("vhosts", [])
        if not isinstance(vhosts, list) or not all(isinstance(v, str) and v for v in vhosts):
            problems.append("vhosts must be a list of vhost names")
            vhosts = []
        pattern = data.get("pattern")
        if pattern is not None:
            if not isinstance(pattern, str):
                problems.append("pattern must be a string")
                pattern = None
            else:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    problems.append(f"invalid queue name pattern {pattern!r}: {exc}")
        per_vhost = data.get("per_vhost", False)
        if not isinstance(per_vhost, bool):
            problems.append("per_vhost must be true or false")
        move_streams = data.get("move_streams", False)
        if not isinstance(move_streams, bool):
            problems.append("move_streams must be true or false")
        rates = {k: _rate(data, k, problems) for k in ("max_publish_rate", "max_deliver_rate")}
        members, group_size, excluded = _members_fields(data, problems)
        if problems:
            raise ConfigurationError("invalid input: " + "; ".join(problems))
        return cls(
            action=str(action),
            concurrency=concurrency,
            batch_size=batch_size,
            rounds=rounds,
            vhosts=tuple(vhosts),
            pattern=pattern,
            per_vhost=bool(per_vhost),
            max_moves=max_moves,
            max_publish_rate=rates["max_publish_rate"],
            max_deliver_rate=rates["max_deliver_rate"],
            poll_seconds=poll,
            members=members,
            group_size=group_size,
            exclude_nodes=tuple(excluded),
            move_streams=move_streams is True,
        )

    def to_dict(self) -> JsonDict:
        data: JsonDict = {
            "action": self.action,
            "concurrency": self.concurrency,
            "batch_size": self.batch_size,
            "rounds": self.rounds,
            "vhosts": list(self.vhosts),
            "per_vhost": self.per_vhost,
            "poll_seconds": self.poll_seconds,
        }
        optional = {
            "pattern": self.pattern,
            "max_moves": self.max_moves,
            "max_publish_rate": self.max_publish_rate,
            "max_deliver_rate": self.max_deliver_rate,
        }
        data.update({k: v for k, v in optional.items() if v is not None})
        if self.move_streams:
            data["move_streams"] = True
        if self.members:
            data.update(members=True, exclude_nodes=list(self.exclude_nodes))
            if self.group_size is not None:
                data["group_size"] = self.group_size
        return data

    def plan_options(self, *, quorum_transfer: bool = True) -> PlanOptions:
        return PlanOptions(
            vhosts=self.vhosts,
            pattern=self.pattern,
            per_vhost=self.per_vhost,
            max_moves=self.max_moves,
            quorum_transfer=quorum_transfer,
            move_streams=self.move_streams,
        )

    def members_options(self) -> MembersOptions:
        """The members plan's options (``members: true``): the same selection as a leader run."""
        return MembersOptions(
            selection=self.plan_options(),
            group_size=self.group_size,
            excluded=frozenset(self.exclude_nodes),
        )


_INPUT_FIELDS = frozenset(
    {
        "action",
        "concurrency",
        "batch_size",
        "rounds",
        "vhosts",
        "pattern",
        "per_vhost",
        "max_moves",
        "max_publish_rate",
        "max_deliver_rate",
        "poll_seconds",
        "members",
        "group_size",
        "exclude_nodes",
        "move_streams",
    }
)
_MEMBERS_ONLY = ("group_size", "exclude_nodes")
_LEADERS_ONLY = ("per_vhost", "max_moves", "move_streams")
"""The members plan spreads every selected quorum queue's members over the whole cluster at once."""


def _members_fields(data: Mapping[str, Any], problems: list[str]) -> tuple[bool, int | None, list[str]]:
    """``members``, ``group_size`` and ``exclude_nodes``; the fields of the other kind of run refused."""
    members = data.get("members", False)
    if not isinstance(members, bool):
        problems.append("members must be true or false")
        members = False
    group_size = None
    if data.get("group_size") is not None:  # only an explicit size shrinks queues
        group_size = _integer(data, "group_size", 1, 1, MAX_GROUP_SIZE, problems)
    excluded = data.get("exclude_nodes", [])
    if not isinstance(excluded, list) or not all(isinstance(n, str) and n for n in excluded):
        problems.append("exclude_nodes must be a list of node names")
        excluded = []
    if not members:
        problems += [f"{k} applies only with members: true" for k in _MEMBERS_ONLY if k in data]
    else:
        problems += [
            f"{k} does not apply with members: true"
            for k in _LEADERS_ONLY
            if data.get(k) not in (None, False)
        ]
    return members, group_size, excluded


def _integer(
    data: Mapping[str, Any], key: str, default: int, low: int, high: int, problems: list[str]
) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{key} must be an integer, not {value!r}")
        return default
    if not low <= value <= high:
        problems.append(f"{key} must be between {low} and {high}, not {value}")
        return default
    return value


def _rate(data: Mapping[str, Any], key: str, problems: list[str]) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    # 1e999 in the input JSON parses as infinity: a limit, like a count, must be a finite number
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        problems.append(f"{key} must be a number of messages per second (0 or more), not {value!r}")
        return None
    return float(value)
