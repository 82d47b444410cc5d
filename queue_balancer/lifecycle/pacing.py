"""The workflow's pacing: waits between checks of a move, history events, the lock's lifetime.

How long the state machine waits between two checks of a move, and how many history events a batch of
moves can cost in the worst case, which decides when a run continues in a fresh execution (Step
Functions caps one execution's history at 25,000 events).
"""

from __future__ import annotations

import math

from queue_balancer.movers import MoveSettings

HISTORY_LIMIT = 25_000
"""Step Functions fails an execution whose history would exceed this many events."""
HISTORY_RESERVE = 300
"""Events kept free for the run's start and end (lock, preflight, plan, report, notify, release, failure path)."""
EVENTS_AT_START = 60
"""What an execution has spent when its first control check runs (start, lock, preflight, plan, wait for go)."""
EVENTS_PER_MOVE = 11
"""Map iteration started/succeeded (2), StartMove task (5), its Choice (2), the closing Succeed (2)."""
EVENTS_PER_CHECK = 9
"""One more round of the move loop: Wait (2), CheckMove task (5), Choice (2)."""
EVENTS_PER_RETRY = 3
"""A failed attempt of a Lambda task before its retry: scheduled, started, failed."""
EVENTS_PER_BATCH = 11
"""ControlCheck task (5), its Choice (2), the Map state entered/started/succeeded/exited (4)."""
EVENTS_PER_CONTROL = 15
"""A control check that does not start a batch (5 + 2), plus a parked task (6) and 2 for margin."""
PHASES_WORST = 5
"""Most phases one move goes through: syncing, promoting, restoring, verifying, or a rollback instead."""
MAX_WAIT_SECONDS = 300
GROWTH = 1.5
WAITS_PER_PHASE = 8
"""The wait between checks grows until a phase is checked about this many times over its deadline."""
LOCK_MARGIN_SECONDS = 600
PARK_TIMEOUT_SECONDS = 86_400
"""How long a run waits for `go` or `continue` (the parked task's TimeoutSeconds in the ASL)."""


def phase_seconds(settings: MoveSettings, messages: int) -> float:
    """The longest one phase of a move may take: its deadline plus the statistics' settle time."""
    return settings.phase_timeout + messages / settings.messages_per_second + settings.settle_timeout


def wait_seconds(poll: int, phase_checks: int, phase_length: float) -> int:
    """Seconds before the next check of a move: ``poll``, growing by half within a phase, up to length / 8.

    Quick phases (a quorum transfer, a small mirror sync, the statistics catching up) are seen within
    a few ``poll``; a sync of millions of messages is checked about ``WAITS_PER_PHASE`` times instead of
    thousands.
    """
    cap = max(poll, min(MAX_WAIT_SECONDS, math.ceil(phase_length / WAITS_PER_PHASE)))
    return int(min(cap, math.ceil(poll * GROWTH ** min(phase_checks, 40))))


def checks_per_phase(poll: int, phase_length: float) -> int:
    """The most checks one phase can take: waits until its deadline has passed, plus the one that sees it."""
    elapsed, checks = 0.0, 0
    while elapsed < phase_length:
        elapsed += wait_seconds(poll, checks, phase_length)
        checks += 1
    return checks + 1


def worst_move_events(poll: int, messages: int, settings: MoveSettings | None = None) -> int:
    """History events of a move that uses every phase up to its deadline (no retries)."""
    length = phase_seconds(settings or MoveSettings(), messages)
    return EVENTS_PER_MOVE + PHASES_WORST * checks_per_phase(poll, length) * EVENTS_PER_CHECK


def worst_batch_events(poll: int, messages: list[int], settings: MoveSettings | None = None) -> int:
    """History events of a batch whose every move runs into every deadline."""
    return EVENTS_PER_BATCH + sum(worst_move_events(poll, m, settings) for m in messages)


def fits_in_history(used: int, next_batch_events: int) -> bool:
    """Whether the next batch can run in this execution, keeping the reserve for the run's end."""
    return used + next_batch_events + HISTORY_RESERVE <= HISTORY_LIMIT


def moves_per_execution(
    poll: int, messages: int = 0, *, checks_per_move: int | None = None, batch: int = 10
) -> int:
    """How many moves of ``messages`` messages one execution holds, in batches of ``batch`` moves.

    With ``checks_per_move`` None every move is assumed to run into every deadline (the guaranteed
    minimum); otherwise each move costs that many checks (typical: 2-3 for a quorum queue, 4-6 for a
    mirrored one). The last batch always has its worst case reserved.
    """
    worst = worst_move_events(poll, messages)
    cost = worst if checks_per_move is None else EVENTS_PER_MOVE + checks_per_move * EVENTS_PER_CHECK
    budget = HISTORY_LIMIT - HISTORY_RESERVE - EVENTS_AT_START - (EVENTS_PER_BATCH + batch * worst)
    if budget < 0:
        return 0
    batches = budget // (EVENTS_PER_BATCH + batch * cost)
    return int(batches * batch + batch)


def worst_move_seconds(poll: int, messages: int, settings: MoveSettings | None = None) -> float:
    """Wall-clock bound of one move: every phase up to its deadline, plus one wait of overshoot."""
    length = phase_seconds(settings or MoveSettings(), messages)
    return PHASES_WORST * (length + wait_seconds(poll, 40, length))


def lock_seconds_for_batch(poll: int, messages: list[int], concurrency: int) -> int:
    """How long the lock must live to cover a batch (moves run ``concurrency`` at a time)."""
    if not messages:
        return LOCK_MARGIN_SECONDS
    longest = max(worst_move_seconds(poll, m) for m in messages)
    waves = math.ceil(len(messages) / max(concurrency, 1))
    return int(waves * longest + LOCK_MARGIN_SECONDS)
