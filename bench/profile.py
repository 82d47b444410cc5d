"""``python -m bench.profile``: where queue-balancer's time goes, phase by phase.

Why a separate tool: ``bench.compare`` times the balancer as a black box (its CLI), which is the honest
comparison but cannot say *why* a run takes what it takes. This runs the very same pieces the
``balance`` command wires together (``cli.connection.connect``, ``plan``, ``run_moves`` with the CLI's mover) in
this process, on the same kind of freshly seeded workloads, and records:

- every move's phase changes (``run_moves``' ``on_change``), hence seconds per phase per move, and the
  "slot-seconds" each phase holds out of the concurrency budget;
- where the driving loop spends its time: management API calls, exact AMQP counts, ``rabbitmqctl eval``
  (Ra leader transfers), sleeping between polls;
- the fixed costs around a run: starting the Python CLI, starting an Erlang CLI, one snapshot and plan.

The instrumentation only wraps calls (it changes no behaviour), and every run is checked afterwards
with the same observer as the bench (spread, moves, messages lost).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

from bench import observe
from bench.cluster import bench_cluster, fresh, progress
from bench.observe import BenchError
from bench.tools import ROOT, git_revision, tree_digest
from bench.workloads import WORKLOADS, Workload, select
from queue_balancer import cli
from queue_balancer.cli import connection as cli_connection
from queue_balancer.errors import BalancerError
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.model import QueueRef
from queue_balancer.movers import MoveProgress
from queue_balancer.planner import plan
from queue_balancer.runner import run_moves

RESULTS = Path(__file__).resolve().parent / "profile.md"
T = TypeVar("T")
PHASES = ("starting", "syncing", "promoting", "transferring", "restoring", "verifying", "rolling_back")


@dataclass
class Meter:
    """Calls and seconds spent in one kind of call."""

    calls: int = 0
    seconds: float = 0.0

    def wrap(self, function: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any, **kwargs: Any) -> T:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - began

        return timed

    def __str__(self) -> str:
        return f"{self.seconds:.2f} s / {self.calls}"


@dataclass
class HttpMeter(Meter):
    """A ``Meter`` for management API calls that also splits them by method and resource.

    Why: the calls are not alike - a policy change makes RabbitMQ re-evaluate every queue of the vhost,
    a queue GET is cheap - and the split shows which kind the driving loop waits on.
    """

    by_kind: dict[str, Meter] = field(default_factory=lambda: defaultdict(Meter))

    def wrap_request(self, request: Callable[..., T]) -> Callable[..., T]:
        timed = self.wrap(request)

        def split(method: str, path: str, *args: Any, **kwargs: Any) -> T:
            kind = f"{method} {path.split('/', 1)[0]}"
            return self.by_kind[kind].wrap(timed)(method, path, *args, **kwargs)

        return split

    def breakdown(self) -> str:
        ranked = sorted(self.by_kind.items(), key=lambda item: -item[1].seconds)
        return ", ".join(f"{kind} {meter}" for kind, meter in ranked)


@dataclass
class Timeline:
    """Phase changes of every move, as ``run_moves`` reports them."""

    events: dict[QueueRef, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    started: dict[QueueRef, float] = field(default_factory=dict)
    finished: dict[QueueRef, float] = field(default_factory=dict)
    outcomes: dict[QueueRef, str] = field(default_factory=dict)

    def record(self, progress: MoveProgress) -> None:
        ref = progress.move.ref
        self.started.setdefault(ref, progress.started_at)
        self.events[ref].append((time.time(), progress.phase.value))
        if progress.finished:
            self.finished[ref] = progress.finished_at or time.time()
            self.outcomes[ref] = progress.phase.value + (f": {progress.outcome}" if progress.outcome else "")

    def phase_seconds(self) -> dict[str, list[float]]:
        """Per phase, the seconds each move spent in it (``starting``: inside ``Mover.start``)."""
        result: dict[str, list[float]] = defaultdict(list)
        for ref, events in self.events.items():
            cursor, phase = self.started[ref], "starting"
            for at, next_phase in events:
                result[phase].append(max(0.0, at - cursor))
                cursor, phase = at, next_phase
            end = self.finished.get(ref)
            if end is not None and phase not in ("done", "failed"):
                result[phase].append(max(0.0, end - cursor))
        return result

    def move_seconds(self) -> list[float]:
        return [self.finished[r] - self.started[r] for r in self.finished]


@dataclass(frozen=True)
class Profile:
    """One profiled balance: the figures of one row of the report."""

    workload: Workload
    concurrency: int
    seconds: float
    """``run_moves`` from first start to last move finished (no process start-up, no snapshot)."""
    moves: int
    failed: int
    phases: dict[str, list[float]]
    move_seconds: list[float]
    http: HttpMeter
    amqp: Meter
    erlang: Meter
    sleeping: Meter
    spread_after: int
    lost: int
    restored: float | None


@contextmanager
def _local_env(cluster: LocalCluster) -> Iterator[None]:
    """Point ``cli.connection.connect`` at the bench cluster, as ``--local`` and its environment would."""
    saved = dict(os.environ)
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_EVAL_COMMAND"):
        os.environ.pop(name, None)
    user, password = cluster.credentials
    os.environ.update(
        {ENV_BASE_DIR: str(cluster.base_dir), "RABBITMQ_USER": user, "RABBITMQ_PASSWORD": password}
    )
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def profile_once(cluster: LocalCluster, workload: Workload, concurrency: int) -> Profile:
    """Seed ``workload`` fresh, balance it in-process with the CLI's own wiring, and measure."""
    client = observe.management(cluster.nodes[0], cluster.credentials)
    label = f"({workload.key}) K={concurrency}"
    before = fresh(cluster, client, workload, label)
    http, amqp, erlang, sleeping = HttpMeter(), Meter(), Meter(), Meter()
    timeline = Timeline()
    args = cli.build_parser().parse_args(["--local", "balance", "--concurrency", str(concurrency)])
    with (
        _local_env(cluster),
        mock.patch.object(LocalCluster, "eval_erlang", erlang.wrap(LocalCluster.eval_erlang)),
    ):
        connection = cli_connection.connect(args)
        current = plan(connection.snapshot(), cli_connection.plan_options(args, connection))
        # Metered from here on: the calls of the moves only, like ``run_moves``' own seconds.
        connection.client.request = http.wrap_request(connection.client.request)  # type: ignore[method-assign]
        counter = getattr(connection, "counter", None)
        if counter is not None and hasattr(counter, "message_counts"):
            counter.message_counts = amqp.wrap(counter.message_counts)
        since = time.monotonic()
        result = run_moves(
            connection.mover(),
            current.moves,
            concurrency=concurrency,
            on_change=timeline.record,
            sleep=sleeping.wrap(time.sleep),
        )
        if counter is not None and hasattr(counter, "close"):
            counter.close()
    after = observe.settle(
        client, timeout=180 + workload.expected_messages / 1000, since=since, reference=before
    )
    profile = Profile(
        workload=workload,
        concurrency=concurrency,
        seconds=result.seconds,
        moves=len(result.moves),
        failed=len(result.failed),
        phases=timeline.phase_seconds(),
        move_seconds=timeline.move_seconds(),
        http=http,
        amqp=amqp,
        erlang=erlang,
        sleeping=sleeping,
        spread_after=after.spread,
        lost=before.messages - after.messages,
        restored=after.restored_after,
    )
    progress(
        f"{label}: {profile.moves} moves ({profile.failed} failed) in {profile.seconds:.2f} s; "
        f"http {http}, amqp {amqp}, eval {erlang}, sleeping {sleeping}; spread {after.spread}, lost {profile.lost}"
    )
    return profile


def fixed_costs(cluster: LocalCluster) -> list[str]:
    """What every run pays before and after its moves, measured three times each (median)."""

    def median_of(run: Callable[[], object]) -> float:
        samples = []
        for _ in range(3):
            began = time.perf_counter()
            run()
            samples.append(time.perf_counter() - began)
        return statistics.median(samples)

    python_cli = median_of(
        lambda: subprocess.run(
            [sys.executable, "-m", "queue_balancer.cli", "--version"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
    )
    erlang_cli = median_of(lambda: cluster.eval_erlang("ok"))
    client = observe.management(cluster.nodes[0], cluster.credentials)
    snapshot = median_of(lambda: (client.nodes(), client.queues()))
    return [
        f"- Python CLI start-up (`python -m queue_balancer.cli --version`): {python_cli:.2f} s",
        f"- Erlang CLI call (`rabbitmqctl eval 'ok.'`, what every Ra transfer batch and the built-in pay): "
        f"{erlang_cli:.2f} s",
        f"- One snapshot (GET /api/nodes + /api/queues, 30-60 queues): {snapshot:.3f} s",
    ]


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def report(profiles: Sequence[Profile], environment: Sequence[str]) -> str:
    """Two tables: phases (median seconds per move, share of slot-seconds), and the loop's time."""
    lines = ["## Where queue-balancer's time goes", "", *environment, "", "### Phases per move", ""]
    header = ["workload", "K", "run s", "moves", "move s (median/max)"] + [
        f"{p} s (median, share)" for p in PHASES
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for p in profiles:
        total = sum(sum(v) for v in p.phases.values()) or 1.0
        cells = [
            f"({p.workload.key})",
            str(p.concurrency),
            f"{p.seconds:.2f}",
            f"{p.moves}" + (f" ({p.failed} failed)" if p.failed else ""),
            f"{_median(p.move_seconds)} / {max(p.move_seconds, default=0):.2f}",
        ]
        for phase in PHASES:
            spent = p.phases.get(phase, [])
            cells.append(f"{_median(spent)} ({sum(spent) / total:.0%})" if spent else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### The driving loop", ""]
    header = [
        "workload",
        "K",
        "run s",
        "HTTP s / calls",
        "AMQP counts s / calls",
        "rabbitmqctl eval s / calls",
        "sleeping s",
        "other s",
        "spread after",
        "lost",
        "in sync after s",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for p in profiles:
        other = p.seconds - p.http.seconds - p.amqp.seconds - p.erlang.seconds - p.sleeping.seconds
        lines.append(
            "| "
            + " | ".join(
                [
                    f"({p.workload.key})",
                    str(p.concurrency),
                    f"{p.seconds:.2f}",
                    str(p.http),
                    str(p.amqp),
                    str(p.erlang),
                    f"{p.sleeping.seconds:.2f}",
                    f"{other:.2f}",
                    str(p.spread_after),
                    str(p.lost),
                    "never" if p.restored is None else f"{p.restored:.1f}",
                ]
            )
            + " |"
        )
    lines += ["", "### Management API calls by kind (seconds / calls)", ""]
    lines += [f"- ({p.workload.key}) K={p.concurrency}: {p.http.breakdown()}" for p in profiles]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description="Profile queue-balancer's moves phase by phase on the bench's workloads and cluster.",
    )
    parser.add_argument(
        "--workloads", default=",".join(w.key for w in WORKLOADS), help="comma-separated keys (default all)"
    )
    parser.add_argument(
        "--concurrency", default="1,8,32", help="comma-separated K values to profile (default 1,8,32)"
    )
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster running at the end")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        workloads = select([k.strip() for k in args.workloads.split(",") if k.strip()])
        levels = [int(k) for k in args.concurrency.split(",") if k.strip()]
        digest = tree_digest(ROOT / "queue_balancer")
        code = f"queue_balancer/ at {git_revision()} (sha256 of its .py files: {digest})"
        with bench_cluster(keep=args.keep_cluster) as cluster:
            environment = [f"- Code: {code}, run in-process", *fixed_costs(cluster)]
            profiles = [profile_once(cluster, w, k) for w in workloads for k in levels]
    except (BalancerError, BenchError, ValueError) as exc:
        progress(f"profile failed: {exc}")
        return 1
    text = report(profiles, environment)
    RESULTS.write_text(text)
    print(text)
    progress(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
