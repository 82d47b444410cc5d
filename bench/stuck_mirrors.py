"""``python -m bench.stuck_mirrors``: reproduce the "mirrors never come back" case and test remedies.

Why: in the bench, about one run in three of workload (b) leaves one classic queue with fewer mirrors
than its policy asks for, for good - with queue-balancer (the move then times out in RESTORING after
60 s and is reported as failed) and with the built-in alike. The queue process misses a policy change
while it is being promoted and keeps applying the policy it knew (for the balancer: the deleted
temporary one, so the statistics even keep showing its name). This script balances workload (b) until
that happens, then tries, in order, what an engine could do about it, and says which one worked:

1. ``POST /api/queues/{vhost}/{name}/actions {"action": "sync"}`` (what the mover does today after 5 s);
2. ``PUT`` the queue's own policy again, unchanged;
3. ``PUT`` a one-queue policy above it with the same HA keys, then ``DELETE`` it (a fresh policy event).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from bench import observe
from bench.cluster import bench_cluster, fresh, progress
from bench.tools import FrozenCode, freeze_code
from bench.workloads import select
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.management import ManagementClient
from queue_balancer.model import Queue

STUCK_FOR = 10.0  # seconds a queue must lack mirrors before it counts as stuck (a move takes ~0.5 s)


def lacking(client: ManagementClient, wanted: int) -> dict[str, Queue]:
    """Classic queues with fewer synchronised mirrors than ``wanted`` right now (real-time view)."""
    return {
        ref.name: q
        for ref, q in observe.queues_now(client).items()
        if q.type.value == "classic" and len(q.in_sync) < wanted
    }


def watch(client: ManagementClient, balancer: subprocess.Popen[str]) -> Queue | None:
    """While the balancer runs, the first queue that lacks mirrors for ``STUCK_FOR`` seconds."""
    since: dict[str, float] = {}
    while balancer.poll() is None:
        now = time.monotonic()
        current = lacking(client, 2)
        since = {name: since.get(name, now) for name in current}
        stuck = [name for name, first in since.items() if now - first > STUCK_FOR]
        if stuck:
            return current[stuck[0]]
        time.sleep(0.3)
    return None


def fixed_within(client: ManagementClient, name: str, seconds: float = 8.0) -> float | None:
    """Seconds until queue ``name`` has its two synchronised mirrors again, or None."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if name not in lacking(client, 2):
            return time.monotonic() - began
        time.sleep(0.2)
    return None


def remedies(client: ManagementClient, queue: Queue) -> list[tuple[str, Callable[[], None]]]:
    own = client.policy(queue.vhost, "seed-ha")

    def sync() -> None:
        client.queue_action(queue.vhost, queue.name, "sync")

    def reput() -> None:
        client.put_policy(
            queue.vhost,
            "seed-ha",
            pattern=own["pattern"],
            definition=own["definition"],
            priority=own["priority"],
            apply_to=own["apply-to"],
        )

    def fresh_event() -> None:
        name = "bench-nudge"
        client.put_policy(
            queue.vhost,
            name,
            pattern=f"^{re.escape(queue.name)}$",
            definition=own["definition"],
            priority=int(own["priority"]) + 100,
        )
        client.delete_policy(queue.vhost, name)

    return [
        ("POST .../actions sync", sync),
        ("re-PUT the queue's own policy, unchanged", reput),
        ("PUT + DELETE a one-queue policy with the same HA keys", fresh_event),
    ]


def attempt(cluster: LocalCluster, code: FrozenCode, number: int) -> bool:
    """One fresh workload (b) and one balance; True when a stuck queue was found (and remedies tried)."""
    client = observe.management(cluster.nodes[0], cluster.credentials)
    fresh(cluster, client, select(["b"])[0], f"attempt {number}")
    user, password = cluster.credentials
    env = {
        **os.environ,
        ENV_BASE_DIR: str(cluster.base_dir),
        "RABBITMQ_USER": user,
        "RABBITMQ_PASSWORD": password,
    }
    env["PYTHONPATH"] = str(code.path)
    env.pop("RABBITMQ_MANAGEMENT_URL", None)
    balancer = subprocess.Popen(
        [*code.command, "--local", "balance", "--format", "json"],
        env=env,
        cwd=code.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stuck = watch(client, balancer)
    if stuck is None:
        balancer.communicate()
        progress(f"attempt {number}: every queue got its mirrors back")
        return False
    raw = client.queue(stuck.vhost, stuck.name)
    temporary = [
        p["name"] for p in client.policies(stuck.vhost) if str(p["name"]).startswith("queue-balancer-")
    ]
    progress(
        f"attempt {number}: {stuck.name} on {stuck.leader} has mirrors {list(stuck.replicas)} "
        f"(in sync: {list(stuck.in_sync)}) for {STUCK_FOR:.0f} s; statistics show policy {raw.get('policy')!r}, "
        f"temporary policies that exist: {temporary}"
    )
    for label, remedy in remedies(client, stuck):
        remedy()
        took = fixed_within(client, stuck.name)
        progress(
            f"  {label}: "
            + ("no effect in 8 s" if took is None else f"mirrors back in sync after {took:.1f} s")
        )
        if took is not None:
            break
    out, _err = balancer.communicate()
    try:
        summary = json.loads(out)
        failures = {m["queue"]: m["outcome"] for m in summary["moves"] if m["result"] != "done"}
        progress(f"  the balancer finished: {summary['moves_done']} done, failed: {failures or 'none'}")
    except (ValueError, KeyError):
        progress("  the balancer gave no JSON summary")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stuck_mirrors", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--attempts", type=int, default=6, help="balances of workload (b) to try (default 6)")
    args = parser.parse_args(argv)
    with bench_cluster() as cluster:
        code = freeze_code(cluster.base_dir / "code")
        for number in range(1, args.attempts + 1):
            if attempt(cluster, code, number):
                return 0
    progress(f"no stuck queue in {args.attempts} attempts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
