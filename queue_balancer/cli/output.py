"""What the commands print, the same way for every command: the result on stdout in the format asked for
(``text`` for people: tables, no Markdown; ``json`` for machines; ``markdown`` where a command offers it,
as SNS does), progress and notices on stderr, each on a line of its own."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from queue_balancer.movers import MoveProgress, Phase
from queue_balancer.runner import RunInterrupted


def print_json(data: Any) -> None:
    """One JSON document on stdout (``--format json``)."""
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def emit(fmt: str, data: Any, text: Callable[[], str], markdown: Callable[[], str] | None = None) -> None:
    """A command's result in the format asked for: ``data`` as JSON, else its text (or Markdown) form."""
    if fmt == "json":
        print_json(data)
    elif fmt == "markdown" and markdown is not None:
        print(markdown())
    else:
        print(text())


class Progress:
    """A progress bar on a terminal, one line per finished move elsewhere (logs, CI)."""

    def __init__(self, total: int, stream: TextIO, label: str) -> None:
        self.total, self.stream, self.label = total, stream, label
        self.done = self.failed = 0
        self.tty = stream.isatty()

    def update(self, progress: MoveProgress) -> None:
        if not progress.finished:
            return
        if progress.phase is Phase.DONE:
            self.done += 1
        else:
            self.failed += 1
        move = progress.move
        if self.tty:
            finished = self.done + self.failed
            bar = "#" * (30 * finished // self.total)
            self.stream.write(
                f"\r{self.label} [{bar:<30}] {finished}/{self.total} moved, {self.failed} failed"
            )
        else:
            result = progress.phase.value + (f" ({progress.outcome})" if progress.outcome else "")
            self.stream.write(
                f"{self.label}: {move.ref} {move.source} -> {move.target}: {result} in {progress.seconds:.2f} s\n"
            )
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def notice(message: str) -> None:
    """Something the operator must see during a run (a lost lock, a slow rollback), on its own line."""
    print(f"\nqueue-balancer: {message}", file=sys.stderr, flush=True)


def interrupted_text(interrupted: RunInterrupted) -> str:
    """What happened to each queue the interrupted run touched, and what it left behind."""
    lines = ["queue-balancer: interrupted"]
    for p in interrupted.moves:
        what = "moved" if p.phase is Phase.DONE else p.outcome or p.phase.value
        lines.append(f"  {p.move.ref} ({p.move.source} -> {p.move.target}): {what}")
    leftovers = list(interrupted.leftovers) + [p for p in interrupted.moves if p.policy]
    for p in leftovers:
        policy = f"temporary policy {p.policy} left in vhost {p.move.vhost}" if p.policy else "no policy left"
        lines.append(f"  {p.move.ref}: rollback ABANDONED while {p.phase.value}: {policy}")
    if leftovers:
        lines.append(
            "  run `queue-balancer cleanup` and check these queues' mirrors with `queue-balancer report`"
        )
    return "\n".join(lines)
