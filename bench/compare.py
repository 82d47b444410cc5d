"""``python -m bench.compare`` (``make bench``): the CLI engine (``queue-balancer balance``), the state
machine with its default input (``queue-balancer run``, the real ASL on the local AWS endpoint) and
``rabbitmq-queues rebalance all``, in one table.

For every workload and every repeat, each tool gets a freshly reset and reseeded 3-node cluster (all
leaders on node 1), is timed around its command only, and is then judged by the same observer: spread
of leaders after (in total and per queue type), leaders moved, messages lost (settled statistics,
cross-checked over AMQP) and temporary policies left. The cluster is the bench's own - own temp
directory, own ports (slot 41.. of the tests' port block, see ``bench.cluster``) - and it is stopped,
with the local endpoint, however the bench ends.

Results: one markdown table on stdout and in ``bench/results.md``; every raw measurement in
``bench/results.json`` (``--output`` puts both elsewhere); progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import observe
from bench.cluster import (
    BENCH_AMQP,
    BENCH_DIST,
    BENCH_EPMD,
    BENCH_MANAGEMENT,
    bench_cluster,
    fresh,
    progress,
)
from bench.observe import BenchError, Settled
from bench.results import RunRecord, check_lines, markdown_table, rows, speed_lines
from bench.tools import (
    BalancerCli,
    BuiltinRebalance,
    FrozenCode,
    StateMachineRun,
    Tool,
    ToolRun,
    freeze_code,
)
from bench.workloads import WORKLOADS, Workload, select
from queue_balancer.errors import BalancerError
from queue_balancer.local.cluster import LocalCluster
from queue_balancer.management import ManagementClient
from queue_balancer.model import QueueRef

HERE = Path(__file__).resolve().parent
RESULTS_MD, RESULTS_JSON = "results.md", "results.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="queue-balancer balance (CLI engine), queue-balancer run (state machine, default input) "
        "and rabbitmq-queues rebalance all, on identical workloads on a local 3-node cluster the bench starts "
        f"(AMQP {BENCH_AMQP}.., management {BENCH_MANAGEMENT}.., distribution {BENCH_DIST}.., epmd "
        f"{BENCH_EPMD}: QUEUE_BALANCER_TEST_PORT_OFFSET shifts them) and stops.",
    )
    parser.add_argument("--repeats", type=_positive, default=1, help="runs per workload and tool (default 1)")
    parser.add_argument(
        "--workloads",
        default=",".join(w.key for w in WORKLOADS),
        help="comma-separated keys, default all: " + "; ".join(f"{w.key} = {w.title}" for w in WORKLOADS),
    )
    parser.add_argument(
        "--tools",
        default="cli,workflow,builtin",
        help="comma-separated, default all three: cli = queue-balancer balance, workflow = queue-balancer "
        "run (the state machine), builtin = rabbitmq-queues rebalance all; also builtin-quorum = "
        "rabbitmq-queues rebalance quorum",
    )
    parser.add_argument(
        "--rabbitmq",
        choices=("3", "4"),
        default="3",
        help="3: Debian's rabbitmq-server (3.10); 4: RabbitMQ 4.0.5 from the trixie root file system, as "
        "`local up --rabbitmq 4` (workload g is issue 10's on 4.0). Default 3",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive,
        default=None,
        metavar="K",
        help="passed to `queue-balancer balance --concurrency` (default: the CLI's default)",
    )
    parser.add_argument(
        "--keep-cluster",
        action="store_true",
        help="leave the cluster running at the end (its directory and how to stop it are printed)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE,
        metavar="DIR",
        help="where results.md and results.json go (default: bench/; a quick partial run can go elsewhere)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="start no cluster: rewrite results.md from the figures in results.json (in --output)",
    )
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


class Bench:
    """The cluster, the bench's observer client, the tools; runs one measurement at a time."""

    def __init__(self, cluster: LocalCluster, code: FrozenCode, concurrency: int | None, tools: str) -> None:
        self.cluster = cluster
        self.client: ManagementClient = observe.management(cluster.nodes[0], cluster.credentials)
        self.balancer = BalancerCli(cluster, code, concurrency)
        self.workflow = StateMachineRun(cluster, code)
        self.rabbitmq = str(self.client.overview().get("rabbitmq_version") or "?")
        available: dict[str, Tool] = {
            "cli": self.balancer,
            "workflow": self.workflow,
            "builtin": BuiltinRebalance(cluster),
            "builtin-quorum": BuiltinRebalance(cluster, scope="quorum"),
        }
        keys = [k.strip() for k in tools.split(",") if k.strip()]
        unknown = [k for k in keys if k not in available]
        if unknown or not keys:
            raise ValueError(
                f"unknown tool(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(available)}"
            )
        self.chosen = [available[k] for k in dict.fromkeys(keys)]
        self._best: dict[str, int] = {}

    def tools(self, repeat: int) -> list[Tool]:
        """Rotate which tool goes first, so none always gets the cluster's "first run" state."""
        shift = (repeat - 1) % len(self.chosen)
        return self.chosen[shift:] + self.chosen[:shift]

    def prepare(self, workload: Workload, label: str) -> tuple[Settled, int]:
        """Reset, seed, wait for settled statistics; return the view before and the best reachable spread
        (planned once per workload: every repeat seeds the same placement)."""
        started = time.monotonic()
        before = fresh(self.cluster, self.client, workload, label)
        if workload.key not in self._best:
            self._best[workload.key] = self.balancer.best_spread()
        best = self._best[workload.key]
        progress(
            f"{label}: seeded in {time.monotonic() - started:.1f} s ({workload.total_queues} queues, "
            f"{before.messages} messages), best reachable spread {best}"
        )
        return before, best

    def measure(self, workload: Workload, tool: Tool, repeat: int) -> RunRecord:
        label = f"({workload.key}) #{repeat} {tool.name}"
        before, best = self.prepare(workload, label)
        since = time.monotonic()
        run = tool.run()
        progress(f"{label}: command returned in {run.seconds:.1f} s (exit {run.exit_code}), settling")
        after = observe.settle(
            self.client, timeout=180 + workload.expected_messages / 1000, since=since, reference=before
        )
        leftovers = observe.temporary_policies(self.client)
        moved = sorted(ref for ref, q in after.queues.items() if q.leader != before.queues[ref].leader)
        record = _record(workload, tool.name, repeat, run, before, after, best, leftovers, len(moved))
        record = replace(record, rabbitmq=self.rabbitmq)
        record = self._cross_check(record, after, moved)
        progress(
            f"{label}: {record.moves} moves, spread {record.spread_before} -> {record.spread_after} "
            f"(best {best}), lost {record.lost}, in sync after "
            f"{'?' if record.restored is None else f'{record.restored:.1f}'} s, "
            f"statistics settled {after.waited:.1f} s after the command"
            + ("" if after.complete else f" - NOT SETTLED: {after.problem}")
        )
        return record

    def _cross_check(self, record: RunRecord, after: Settled, moved: Sequence[QueueRef]) -> RunRecord:
        """Exact counts over AMQP: every queue passively declared, one moved queue drained."""
        drain = moved[0] if moved else next(iter(sorted(after.queues)), None)
        try:
            check = observe.amqp_check(self.cluster.nodes[0], self.cluster.credentials, after, drain)
        except Exception as exc:  # a failed cross-check is a finding to report, not a reason to stop
            return replace(record, error=(record.error + f"; AMQP cross-check failed: {exc!r}").lstrip("; "))
        return replace(
            record,
            amqp_total=check.total,
            drained_queue=check.drained_queue,
            drained=check.drained,
            drained_expected=check.drained_expected,
        )


def _record(
    workload: Workload,
    tool: str,
    repeat: int,
    run: ToolRun,
    before: Settled,
    after: Settled,
    best: int,
    leftovers: Sequence[str],
    moves: int,
) -> RunRecord:
    summary = run.summary
    balancer: dict[str, Any] = {}
    if summary:
        balancer = {
            "moves_done": summary.get("moves_done"),
            "moves_failed": summary.get("moves_failed"),
            "seconds": summary.get("seconds"),
            "move_seconds": [m.get("seconds") for m in summary.get("moves", [])],
            "failures": {
                m["queue"]: m.get("outcome") for m in summary.get("moves", []) if m.get("result") != "done"
            },
        }
    return RunRecord(
        workload=workload.key,
        tool=tool,
        repeat=repeat,
        seconds=run.seconds,
        restored=after.restored_after,
        settle_wait=after.waited,
        settled=after.complete,
        best_spread=best,
        spread_before=before.spread,
        spread_after=after.spread,
        spread_by_type_after=after.spread_by_type,
        leaders_after=after.leaders,
        moves=moves,
        messages_before=before.messages,
        messages_after=after.messages,
        temporary_policies=tuple(leftovers),
        exit_code=run.exit_code,
        error=run.error,
        execution_seconds=run.execution_seconds,
        balancer=balancer,
    )


# ---- environment and output ----------------------------------------------------------------------


def machine() -> str:
    """CPU model and count, memory: the figures only mean something next to the machine they ran on."""
    model = platform.processor() or platform.machine()
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) // 1024 // 1024} GiB RAM"
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}){memory}, {platform.system()} {platform.release()}"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def versions(client: ManagementClient) -> str:
    overview = client.overview()
    return f"RabbitMQ {overview.get('rabbitmq_version')} on Erlang {overview.get('erlang_version')}"


def report(
    workloads: Sequence[Workload],
    records: Sequence[RunRecord],
    *,
    environment: Sequence[str],
) -> str:
    table = rows(workloads, records)
    lines = [
        "## queue-balancer (CLI engine, state machine) vs rabbitmq-queues rebalance all",
        "",
        *environment,
        "",
        markdown_table(table),
        "",
        "Speed against the targets (medians):",
        *speed_lines(table),
        "",
        "Checks:",
        *(check_lines(records) or ["- none"]),
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, cluster: LocalCluster) -> int:
    workloads = select([k.strip() for k in args.workloads.split(",") if k.strip()])
    started = time.monotonic()
    code = freeze_code(cluster.base_dir / "code")
    progress(f"measuring the code as of {code.revision} (digest {code.digest}), frozen in {code.path}")
    bench = Bench(cluster, code, args.concurrency, args.tools)
    if bench.workflow in bench.chosen:
        bench.workflow.start()  # stopped with the cluster (bench.cluster)
    concurrency = (
        str(args.concurrency) if args.concurrency else f"{bench.balancer.default_concurrency()} (CLI default)"
    )
    environment = [
        f"- Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `python -m bench.compare"
        + (f" --workloads {args.workloads}" if args.workloads != ",".join(w.key for w in WORKLOADS) else "")
        + (f" --tools {args.tools}" if args.tools != "cli,workflow,builtin" else "")
        + (f" --concurrency {args.concurrency}" if args.concurrency else "")
        + f" --repeats {args.repeats}`",
        f"- Code: queue_balancer/, lambdas/, statemachine/ at {code.revision} (sha256 of their files: "
        f"{code.digest})",
        f"- Machine: {machine()}; load average at the start {_load()}",
        f"- Cluster: 3 nodes on loopback, {versions(bench.client)}, statistics interval 5 s (default)",
        f"- CLI engine concurrency: {concurrency}; state machine: its default input (`run` with no option); "
        f"{args.repeats} repeat(s) per workload and tool, each from a freshly reset and reseeded cluster",
    ]
    records: list[RunRecord] = []
    for workload in workloads:
        for repeat in range(1, args.repeats + 1):
            for tool in bench.tools(repeat):
                records.append(bench.measure(workload, tool, repeat))
                _save(args.output, workloads, records, environment)
    environment.append(f"- Whole bench: {(time.monotonic() - started) / 60:.1f} min")
    _save(args.output, workloads, records, environment)
    return _render(args.output)


def _save(
    output: Path, workloads: Sequence[Workload], records: Sequence[RunRecord], environment: Sequence[str]
) -> None:
    """Every raw figure, after every run: an interrupted bench keeps what it measured."""
    data = {
        "environment": list(environment),
        "workloads": [w.key for w in workloads],
        "runs": [r.to_dict() for r in records],
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / RESULTS_JSON).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _render(output: Path) -> int:
    """Write ``results.md`` (and stdout) from ``results.json``; ``--render`` does only this."""
    data = json.loads((output / RESULTS_JSON).read_text())
    workloads = select(data["workloads"])
    records = [RunRecord.from_dict(r) for r in data["runs"]]
    text = report(workloads, records, environment=data["environment"])
    (output / RESULTS_MD).write_text(text)
    print(text)
    progress(f"table written to {output / RESULTS_MD}, raw figures in {output / RESULTS_JSON}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return _render(args.output)
    try:
        with bench_cluster(keep=args.keep_cluster, rabbitmq=args.rabbitmq) as cluster:
            return run(args, cluster)
    except (BalancerError, BenchError, ValueError) as exc:
        progress(f"bench failed: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
