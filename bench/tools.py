"""The contenders, each run exactly as an operator would run it, and timed around that command only.

- ``queue-balancer --local balance --format json``: the CLI engine, a subprocess, so its wall time includes
  its start-up like the built-in's includes the Erlang CLI's, and so the bench exercises the real command,
  flags and exit codes.
- ``queue-balancer --local run --wait --format json``: the state machine with its default input (what the
  EventBridge schedule and a console start run): the real ``statemachine/balancer.asl.json`` executed by
  the local AWS endpoint, whose Lambda tasks are the real handlers. Timed from the command's start until it
  has printed the run's report (the lifecycle back in IDLE), its start-up and its 0.5 s polling included.
- ``rabbitmq-queues rebalance all``: RabbitMQ's own command, through ``LocalCluster.rabbitmq_queues``.

Both of the project's commands run from a copy of ``queue_balancer/``, ``lambdas/`` and ``statemachine/``
frozen when the bench started (``FrozenCode``), not from the live tree; so does the local endpoint. They
find the bench's cluster through ``QUEUE_BALANCER_LOCAL_DIR``; the connection variables a developer may
have exported (``RABBITMQ_MANAGEMENT_URL`` ...) are removed, so they cannot wander off to another cluster.

``queue-balancer plan --format json`` gives the best distribution reachable from the same starting
point, so the table can say whether each tool got there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import boto3

from queue_balancer.errors import BalancerError
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.local.endpoint import local_outputs, stop_endpoint
from queue_balancer.model import spread

ROOT = Path(__file__).resolve().parent.parent
FROZEN = ("queue_balancer", "lambdas", "statemachine")
"""What the project's commands and the local endpoint run: the engine, the handlers, the ASL."""
CLI_ENGINE = "queue-balancer balance (CLI)"
STATE_MACHINE = "queue-balancer run (state machine, default input)"
BUILTIN = "rabbitmq-queues rebalance all"
# Variables that would point the balancer at another cluster than the bench's.
_FOREIGN_ENV = ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_EVAL_COMMAND", "RABBITMQ_USER", "RABBITMQ_PASSWORD")


@dataclass(frozen=True)
class ToolRun:
    """What running a tool once gave: its wall time and, for the balancer, its own JSON summary."""

    seconds: float
    exit_code: int
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    execution_seconds: float | None = None
    """The state machine's own duration (the execution's start to stop), without the CLI that follows it."""


class Tool(Protocol):
    """A balancing command the bench can time."""

    @property
    def name(self) -> str: ...

    def run(self) -> ToolRun: ...


@dataclass(frozen=True)
class FrozenCode:
    """A copy of ``queue_balancer/``, ``lambdas/`` and ``statemachine/`` taken when the bench starts: every
    run measures the same code.

    Why: the tree is shared with engineers who edit the engine while the bench runs for many minutes;
    without a copy, runs 1 and 30 could measure different code (or a half-saved file). The digest and
    the git revision go into the results, so a table can always be traced back to the code it measured.
    """

    path: Path
    digest: str
    revision: str

    @property
    def command(self) -> list[str]:
        """The CLI's ``main`` from the copy - what ``.venv/bin/queue-balancer`` runs, minus the tree."""
        return [sys.executable, "-m", "queue_balancer.cli"]


def freeze_code(dest: Path, *, attempts: int = 6, wait: float = 10.0) -> FrozenCode:
    """Copy the project's code into ``dest`` once the copy's CLI and handlers import (an edit may be
    half-saved)."""
    error = ""
    for attempt in range(1, attempts + 1):
        for name in FROZEN:
            target = dest / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        check = subprocess.run(
            [sys.executable, "-c", "import queue_balancer.cli, lambdas.run_batch"],
            cwd=dest,
            env={**os.environ, "PYTHONPATH": str(dest)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check.returncode == 0:
            return FrozenCode(dest, tree_digest(dest), git_revision())
        error = check.stderr.strip().splitlines()[-1] if check.stderr.strip() else f"exit {check.returncode}"
        if attempt < attempts:
            time.sleep(wait)  # another engineer's edit in progress: retry on a fresh copy
    raise BalancerError(f"the working tree's code does not import ({error}); retry when it does")


def tree_digest(tree: Path) -> str:
    """A short hash of every ``.py`` and ``.json`` file (path and content): equal digests, equal code."""
    digest = hashlib.sha256()
    for path in sorted([*tree.rglob("*.py"), *tree.rglob("*.json")]):
        digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def git_revision() -> str:
    """``<commit>`` or ``<commit> + uncommitted changes`` (of the frozen code), for the results header."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", *FROZEN)
    return f"{commit} + uncommitted changes" if dirty else commit


def frozen_command(
    cluster: LocalCluster, code: FrozenCode, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``queue-balancer --local ARGS`` from the frozen code, against the bench's cluster only."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    user, password = cluster.credentials
    env.update(
        {
            ENV_BASE_DIR: str(cluster.base_dir),
            "RABBITMQ_USER": user,
            "RABBITMQ_PASSWORD": password,
            "PYTHONPATH": str(code.path),
        }
    )
    return subprocess.run(
        [*code.command, "--local", *args],
        env=env,
        cwd=code.path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _timed_json(cluster: LocalCluster, code: FrozenCode, args: list[str], timeout: float) -> ToolRun:
    """Run one of the project's commands, timed; its JSON report on stdout becomes the summary."""
    started = time.monotonic()
    done = frozen_command(cluster, code, *args, timeout=timeout)
    seconds = time.monotonic() - started
    summary: dict[str, Any] = {}
    error = ""
    try:
        summary = json.loads(done.stdout[done.stdout.index("{") :])  # `run` prints a line before it
    except ValueError:
        error = (done.stderr.strip() or done.stdout.strip())[-500:] or "no JSON summary"
    if done.returncode not in (0, 2):  # 2 = some moves failed; the summary says which
        error = error or done.stderr.strip()[-500:]
    return ToolRun(seconds, done.returncode, error, summary)


@dataclass(frozen=True)
class BalancerCli:
    """``queue-balancer balance`` (the CLI engine) against the bench's local cluster."""

    cluster: LocalCluster
    code: FrozenCode
    concurrency: int | None = None
    timeout: float = 1800.0
    name: str = CLI_ENGINE

    def plan(self) -> dict[str, Any]:
        """``plan --format json`` now: its ``after`` is the best distribution the movable queues allow."""
        done = frozen_command(self.cluster, self.code, "plan", "--format", "json", timeout=self.timeout)
        if done.returncode != 0:
            raise BalancerError(
                f"queue-balancer plan failed ({done.returncode}): {done.stderr.strip()[-500:]}"
            )
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def best_spread(self) -> int:
        return spread(self.plan()["after"])

    def run(self) -> ToolRun:
        args = ["balance", "--format", "json"]
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        return _timed_json(self.cluster, self.code, args, self.timeout)

    def default_concurrency(self) -> str:
        """The CLI's own default, read from its help, so the table names the number actually used."""
        done = frozen_command(self.cluster, self.code, "balance", "--help", timeout=60)
        found = re.search(r"moves at once \(default (\d+)\)", " ".join(done.stdout.split()))
        return found.group(1) if found else "CLI default"


@dataclass(frozen=True)
class StateMachineRun:
    """``queue-balancer run --wait`` with no option: the workflow's default input, as the schedule sends it.

    The local AWS endpoint (moto with Step Functions execution on, the real handlers bound in-process)
    runs from the frozen code next to the bench's cluster; ``start`` brings it up once, ``stop`` ends it.
    """

    cluster: LocalCluster
    code: FrozenCode
    timeout: float = 1800.0
    name: str = STATE_MACHINE

    def start(self) -> None:
        """``local up`` from the frozen code: the cluster already runs, so it only starts the endpoint."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        done = frozen_command(
            self.cluster, self.code, "local", "up", "--endpoint-port", str(port), timeout=300
        )
        if done.returncode != 0:
            raise BalancerError(f"the local AWS endpoint did not start: {done.stderr.strip()[-500:]}")

    def stop(self) -> None:
        stop_endpoint(self.cluster.base_dir)

    def run(self) -> ToolRun:
        done = _timed_json(self.cluster, self.code, ["run", "--wait", "--format", "json"], self.timeout)
        run_id = str(done.summary.get("run_id") or "")
        return replace(done, execution_seconds=self._execution_seconds(run_id) if run_id else None)

    def _execution_seconds(self, run_id: str) -> float | None:
        """startDate to stopDate of the run's execution (its name is the run id), from the endpoint."""
        outputs = local_outputs(self.cluster.base_dir)
        session = boto3.Session(
            region_name=outputs.Region, aws_access_key_id="local", aws_secret_access_key="local"
        )
        sfn = session.client("stepfunctions", endpoint_url=outputs.EndpointUrl)
        arn = outputs.StateMachineArn.replace(":stateMachine:", ":execution:") + ":" + run_id
        described = sfn.describe_execution(executionArn=arn)
        if "stopDate" not in described:
            return None
        return float((described["stopDate"] - described["startDate"]).total_seconds())


@dataclass(frozen=True)
class BuiltinRebalance:
    """``rabbitmq-queues rebalance <scope>`` on node 1 (the node holding every leader): ``all``, or
    ``quorum`` (on 4.x the fair comparison for quorum leaders: ``all`` counts streams with them)."""

    cluster: LocalCluster
    timeout: float = 1800.0
    scope: str = "all"

    @property
    def name(self) -> str:
        return f"rabbitmq-queues rebalance {self.scope}"

    def run(self) -> ToolRun:
        started = time.monotonic()
        try:
            self.cluster.rabbitmq_queues("rebalance", self.scope, timeout=self.timeout)
        except BalancerError as exc:
            return ToolRun(time.monotonic() - started, 1, str(exc)[-500:])
        return ToolRun(time.monotonic() - started, 0)
