"""When a restarted node lets the next one start (``local up`` after a crash of every node): once it serves
its API, logs that it waits for its peers' tables, or sits silent in Mnesia's start waiting for a peer to
settle a transaction the crash cut in two. A stand-in node process and log; the real nodes are in
tests/integration/test_local_cluster.py."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from queue_balancer.local import boot
from queue_balancer.local.layout import LocalClusterError, LocalNode

NODE = LocalNode(index=1, name="qb1@localhost", amqp_port=1, management_port=2, dist_port=3)


@dataclass
class Booting:
    """A node process, alive (``returncode`` None) or dead, that answers no HTTP yet."""

    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class MnesiaProbe:
    """Whether Mnesia's start waits for a peer's decision: the answers in turn, the last one from then on."""

    answers: list[bool]
    asked: int = 0
    timeouts: list[float] = field(default_factory=list)

    def __call__(self, timeout: float) -> bool:
        self.asked += 1
        self.timeouts.append(timeout)
        return self.answers[min(self.asked, len(self.answers)) - 1]


@pytest.fixture(autouse=True)
def api_not_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot, "nodes_view", lambda node, auth: None)


def wait(log: Path, probe: MnesiaProbe, *, within: float, node: Booting | None = None) -> boot.BootState:
    return boot.await_started_or_waiting(
        NODE,
        cast("subprocess.Popen[bytes]", node or Booting()),
        auth=("admin", "admin"),
        log=log,
        log_offset=0,
        deadline=time.monotonic() + within,
        failure_hint=lambda: "its last line",
        waits_for_decision=probe,
        quiet_seconds=0.3,
    )


def test_a_node_silent_in_mnesias_start_lets_the_next_one_start(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    log.write_text("[notice] Logging: configured log handlers are now ACTIVE\n")
    probe = MnesiaProbe([False, True])  # not answering yet (or a slow boot step), then waiting
    assert wait(log, probe, within=30) == "waiting in mnesia start"
    assert probe.asked == 2 and all(1.0 <= t <= 20.0 for t in probe.timeouts)


def test_a_node_that_only_boots_slowly_is_asked_once_per_quiet_spell_and_never_let_past(
    tmp_path: Path,
) -> None:
    log = tmp_path / "node.log"
    log.write_text("[notice] Logging: configured log handlers are now ACTIVE\n")
    probe = MnesiaProbe([False])
    with pytest.raises(LocalClusterError, match="did not get past its boot checks in time: its last line"):
        wait(log, probe, within=2.5)
    # After every 0.3 s of silence, not at every 0.2 s poll, and not in up's last second.
    assert 2 <= probe.asked <= 5 and all(t > 1.0 for t in probe.timeouts)


def test_a_node_waiting_for_its_peers_tables_lets_the_next_one_start_unasked(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    log.write_text("[info] <0.223.0> Waiting for Mnesia tables for 30000 ms, 9 retries left\n")
    probe = MnesiaProbe([True])
    assert wait(log, probe, within=30) == "waiting for tables"
    assert probe.asked == 0


def test_a_node_whose_log_moves_is_not_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = iter(range(1, 10_000))
    monkeypatch.setattr(boot, "log_size", lambda path: next(sizes))  # a new line at every poll
    probe = MnesiaProbe([True])
    with pytest.raises(LocalClusterError):
        wait(tmp_path / "node.log", probe, within=1.0)
    assert probe.asked == 0


def test_a_node_that_has_not_logged_yet_is_not_asked(tmp_path: Path) -> None:
    """Before its log handlers are up the node cannot be waiting in Mnesia's start: no CLI call yet."""
    probe = MnesiaProbe([True])
    with pytest.raises(LocalClusterError):
        wait(tmp_path / "node.log", probe, within=1.0)
    assert probe.asked == 0


def test_a_node_that_died_while_starting_says_so(tmp_path: Path) -> None:
    with pytest.raises(LocalClusterError, match=r"stopped while starting \(exit code 1\): its last line"):
        wait(tmp_path / "missing.log", MnesiaProbe([True]), within=5, node=Booting(returncode=1))
