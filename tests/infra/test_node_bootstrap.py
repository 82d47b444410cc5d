"""node_bootstrap.sh: shellcheck-clean, and what it writes boots a real RabbitMQ node.

The rendered rabbitmq.conf is started as it is, except for three lines: the peer discovery backend becomes
``classic_config`` (so the node makes no call to AWS; the ``cluster_formation.aws.*`` keys stay and must
parse) and AMQP/management listen on loopback ports nothing else uses. The script's own admin-user and
policy functions then run against that node, with only the Secrets Manager read stubbed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.exceptions
import pytest

from queue_balancer.lock import LOCK_PARAMETER
from stacks.node_user_data import BOOTSTRAP_SCRIPT, without_comment_lines
from tests.infra.local_ports import node_ports

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
NODE = "qbconf@localhost"
AMQP_PORT, MANAGEMENT_PORT, DIST_PORT, EPMD_PORT = node_ports(85).all()
SETTINGS = {
    "CLUSTER_NAME": "conf-test",
    "AWS_REGION": "eu-west-1",
    "COOKIE_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cookie-AbCdEf",
    "ADMIN_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:admin-AbCdEf",
    "RABBITMQ_VERSION": "3.10.8",  # the node these tests start (Debian 12's)
    "ERLANG_VERSION": "26.2",
    "QUEUE_TYPE": "classic",
}
ADMIN = {"username": "admin", "password": "Bootstrap-Test-Pw-1"}
BALANCER = {"username": "queue-balancer", "password": "Balancer-Test-Pw-2"}


def render(function: str, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    """Output of one of the script's functions, called after sourcing it (nothing else runs)."""
    command = f'source "$1"; shift; {function} "$@"'
    done = subprocess.run(
        ["bash", "-c", command, "bash", str(BOOTSTRAP_SCRIPT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **SETTINGS, **(env or {})},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{function} failed: {done.stderr}"
    return done.stdout


def test_shellcheck_is_clean() -> None:
    done = subprocess.run(
        ["shellcheck", "--severity=style", str(BOOTSTRAP_SCRIPT)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_sourcing_the_script_runs_nothing() -> None:
    assert render("true") == ""


def test_conf_forms_the_cluster_through_aws_peer_discovery_of_the_autoscaling_group() -> None:
    conf = render("render_rabbitmq_conf")
    lines = {line.strip() for line in conf.splitlines()}
    for expected in (
        "cluster_name = conf-test",
        "cluster_formation.peer_discovery_backend = aws",
        "cluster_formation.aws.region = eu-west-1",
        "cluster_formation.aws.use_autoscaling_group = true",
        "cluster_formation.aws.use_private_ip = false",
        "cluster_partition_handling = pause_minority",
        "listeners.tcp.default = 5672",
        "management.tcp.port = 15672",
    ):
        assert expected in lines
    assert "guest" not in conf.replace("loopback_users.guest = true", "")


def test_node_name_is_the_private_dns_name_with_long_names() -> None:
    host = "ip-10-0-17-4.eu-west-1.compute.internal"
    assert render("render_rabbitmq_env", host) == f"NODENAME=rabbit@{host}\nUSE_LONGNAME=true\n"


def test_packages_come_from_the_team_rabbitmq_repositories_pinned_to_the_version() -> None:
    repo = render("render_yum_repo")
    assert repo.count("baseurl=https://yum1.rabbitmq.com/") == 4
    assert "gpgcheck=1" in repo and "repo_gpgcheck=1" in repo
    script = BOOTSTRAP_SCRIPT.read_text()
    assert '"rabbitmq-server-${RABBITMQ_VERSION}"' in script and '"erlang-${ERLANG_VERSION}*"' in script


def test_quorum_queues_reconcile_their_membership_from_3_13_on() -> None:
    assert "continuous_membership_reconciliation" not in render("render_rabbitmq_conf")  # 3.10
    conf = render("render_rabbitmq_conf", env={"RABBITMQ_VERSION": "4.1.7"})
    assert "quorum_queue.continuous_membership_reconciliation.enabled = true" in conf
    assert "quorum_queue.continuous_membership_reconciliation.target_group_size = 3" in conf


def queue_line(name: str, kind: str, **fields: object) -> str:
    return json.dumps({"vhost": "/", "name": name, "type": kind, **fields})


def test_queues_at_risk_are_those_one_more_loss_would_hurt_or_that_lost_a_member() -> None:
    three, two = ["a", "b", "c"], ["a", "b"]
    lines = [
        queue_line("healthy", "quorum", members=three, online=three),
        queue_line("one-member-down", "quorum", members=three, online=two),
        queue_line("lost-a-member", "quorum", members=two, online=two),
        queue_line("in-sync", "classic", slave_pids=["p1", "p2"], synchronised_slave_pids=["p1", "p2"]),
        queue_line("syncing", "classic", slave_pids=["p1", "p2"], synchronised_slave_pids=["p1"]),
        queue_line("unmirrored", "classic", slave_pids="", synchronised_slave_pids=""),
    ]
    at_risk = render("queues_at_risk", "3", stdin="\n".join(lines) + "\n").split()
    assert at_risk == ["//one-member-down", "//lost-a-member", "//syncing"]
    # Two running nodes: a two-member queue is all the cluster can hold.
    assert render("queues_at_risk", "2", stdin=lines[2] + "\n") == ""


def test_the_successor_grows_queues_onto_the_node_with_the_fewest_members() -> None:
    lines = [
        queue_line("q1", "quorum", members=["a", "b"], online=["a", "b"]),
        queue_line("q2", "quorum", members=["a", "c"], online=["a", "c"]),
    ]
    running = json.dumps(["a", "b", "c", "new"])
    assert render("node_with_fewest_members", running, stdin="\n".join(lines)).strip() == "new"


# `rabbitmq-queues quorum_status --formatter json` as 3.10.8 and 4.0.5 print it (captured here, trimmed).
STATUS_3_10 = [
    {"Node Name": "new", "Raft State": "follower", "Log Index": 2870, "Commit Index": 2870},
    {"Node Name": "a", "Raft State": "leader", "Log Index": 3005, "Commit Index": 3005},
    {"Node Name": "b", "Raft State": "follower", "Log Index": 2990, "Commit Index": 2990},
    {"Node Name": "c", "Raft State": "noproc", "Log Index": 3005, "Commit Index": 3005},
]
STATUS_4_0 = [
    {"Node Name": "a", "Raft State": "leader", "Membership": "voter", "Last Log Index": 3006,
     "Last Written": 3006, "Last Applied": 3006, "Commit Index": 3006},
    {"Node Name": "b", "Raft State": "follower", "Membership": "voter", "Last Log Index": 3006,
     "Last Written": 3006, "Last Applied": 3006, "Commit Index": 3006},
    {"Node Name": "new", "Raft State": "follower", "Membership": "promotable", "Last Log Index": 3006,
     "Last Written": 3006, "Last Applied": 3006, "Commit Index": 3006},
    {"Node Name": "c", "Raft State": "follower", "Membership": "voter", "Last Log Index": 3006,
     "Last Written": 12, "Last Applied": 12, "Commit Index": 12},
]  # fmt: skip


def test_a_member_caught_up_when_it_runs_votes_and_its_log_reaches_the_target_index() -> None:
    """3.10 has no Membership column: its log index decides; 4.x also needs a voter (a new member is
    promotable until its initial sync ends). The target is the leader's commit index when the check began
    (monotonic under load: a follower behind the moving commit index passes once it wrote the target), or
    the commit index now when none is given."""
    assert render("caught_up_members", stdin=json.dumps(STATUS_3_10)).split() == ["a"]
    assert render("caught_up_members", "2990", stdin=json.dumps(STATUS_3_10)).split() == ["a", "b"]
    assert render("caught_up_members", "2800", stdin=json.dumps(STATUS_3_10)).split() == ["new", "a", "b"]
    assert render("caught_up_members", stdin=json.dumps(STATUS_4_0)).split() == ["a", "b"]
    leaderless = [{**row, "Raft State": "follower"} for row in STATUS_3_10]
    assert render("caught_up_members", "0", stdin=json.dumps(leaderless)) == ""
    assert render("leader_commit_index", stdin=json.dumps(STATUS_3_10)).strip() == "3005"
    assert render("leader_commit_index", stdin=json.dumps(leaderless)) == ""


def _read(vhost: str, name: str, *states: tuple[str, str, int]) -> str:
    """One line of the hooks' eval (QUORUM_STATUSES_ERL): a queue's quorum_status rows, base64-encoded."""
    rows = [{"Node Name": n, "Raft State": s, "Log Index": i, "Commit Index": i} for n, s, i in states]
    encoded = base64.b64encode(json.dumps({"vhost": vhost, "name": name, "status": rows}).encode()).decode()
    return f"status:{encoded}"


@pytest.mark.parametrize("eval_exit", [0, 70])
def test_one_eval_a_pass_reads_every_queue_and_whatever_it_misses_counts_as_lagging(
    tmp_path: Path, eval_exit: int
) -> None:
    """quorum_queues_lagging reads all of a node's quorum queues in one eval. A queue it did not read (left
    out, or a line that does not decode), a member whose state is no Raft state (a node down) and an eval
    that failed after printing some queues: each only ever makes queues lag, never pass; what was read
    still counts. Boot needs a majority plus one caught up; leaving, every other member."""
    three = ["a", "b", "c"]
    lines = [
        _read("/", "caught-up", ("a", "leader", 10), ("b", "follower", 10), ("c", "follower", 10)),
        _read('v"x', "q 2", ("a", "leader", 10), ("b", "{error,nodedown}", 10), ("c", "follower", 10)),
        _read("/", "behind", ("a", "leader", 10), ("b", "follower", 10), ("c", "follower", 4)),
        "status:not base64 at all",
        "Error: a partial answer",
    ]
    stub = "ctl() { [[ $2 == eval ]] && printf '%s\\n' " + " ".join(f"'{line}'" for line in lines)
    stub += f"; return {eval_exit}; }}; "
    snapshot = (
        "\n".join(
            queue_line(name, "quorum", members=three, online=three)
            for name in ("caught-up", "behind", "unread")
        )
        + "\n"
        + json.dumps({"vhost": 'v"x', "name": "q 2", "type": "quorum", "members": three, "online": three})
    )
    targets = tmp_path / "targets"
    targets.touch()
    lagging = render(stub + "quorum_queues_lagging", "a", "boot", str(targets), stdin=snapshot)
    assert sorted(lagging.splitlines()) == ["//behind", "//unread", 'v"x/q 2']
    assert sorted(targets.read_text().splitlines()) == ["//behind\t10", "//caught-up\t10", 'v"x/q 2\t10']
    leaving = render(stub + "quorum_queues_lagging", "a", "leaving", str(targets), stdin=snapshot)
    assert sorted(leaving.splitlines()) == ["//behind", "//unread", 'v"x/q 2']
    stub_all_read = stub.replace("'status:not base64 at all'", "")
    assert "//caught-up" not in render(
        stub_all_read + "quorum_queues_lagging", "a", "leaving", stdin=snapshot
    )


def test_the_nodes_own_quorum_queues_need_a_majority_plus_one_at_boot_and_all_others_to_leave() -> None:
    three, five = ["a", "b", "c"], ["a", "b", "c", "d", "e"]
    lines = [
        queue_line("q3", "quorum", members=three, online=three),
        queue_line("q5", "quorum", members=five, online=five),
        queue_line("elsewhere", "quorum", members=["b", "c", "d"], online=["b", "c", "d"]),
        queue_line("two", "quorum", members=["a", "b"], online=["a", "b"]),
        queue_line("mirrored", "classic", slave_pids=["p1"], synchronised_slave_pids=["p1"]),
    ]
    stdin = "\n".join(lines) + "\n"
    boot = [json.loads(line) for line in render("quorum_queues_to_check", "a", stdin=stdin).splitlines()]
    assert [(q["name"], q["needed"]) for q in boot] == [("q3", 3), ("q5", 4)]
    leave = render("quorum_queues_to_check", "a", "leaving", stdin=stdin).splitlines()
    assert [(q["name"], q["needed"]) for q in map(json.loads, leave)] == [("q3", 2), ("q5", 4), ("two", 1)]


def test_a_leaving_node_grows_each_of_its_quorum_queues_onto_the_emptiest_spare_node() -> None:
    """Spare: running, not in maintenance, holding none of the queue's members; assignments spread. Only
    queues whose members all run grow; a voter (before 3.13) only where the running members alone make
    the grown queue's majority (a one-member queue would need the new, empty member's vote)."""
    lines = [
        queue_line("q1", "quorum", members=["old", "b", "c"], online=["old", "b", "c"]),
        queue_line("q2", "quorum", members=["old", "b", "d"], online=["old", "b", "d"]),
        queue_line("q3", "quorum", members=["old", "b", "c"], online=["old", "b", "c"]),
        queue_line("down", "quorum", members=["old", "b", "c"], online=["old", "b"]),
        queue_line("full", "quorum", members=["old", "b", "c", "d", "e"], online=["old", "b", "c"]),
        queue_line("alone", "quorum", members=["old"], online=["old"]),
        queue_line("not-mine", "quorum", members=["b", "c", "d"], online=["b", "c", "d"]),
    ]
    status = {
        "running_nodes": ["old", "b", "c", "d", "e", "drained"],
        "maintenance_status": {"drained": "marked for maintenance", "e": "not under maintenance"},
    }

    def spares(added: str) -> list[tuple[str, ...]]:
        out = render("spare_members_to_add", "old", json.dumps(status), added, stdin="\n".join(lines))
        fields = out.split("\0")
        assert fields[-1] == ""
        return [tuple(fields[i : i + 3]) for i in range(0, len(fields) - 1, 3)]

    # Members held: e 1, d 3, c 5. q1 -> e; q2 -> e (d holds q2); q3: d and e hold 3 each now -> d (first).
    assert spares("voter") == [("/", "q1", "e"), ("/", "q2", "e"), ("/", "q3", "d")]
    assert spares("non-voter")[-1] == ("/", "alone", "e")


def _stubbed_run(tmp_path: Path, stubs: str, steps: str) -> tuple[int, list[str], str]:
    """The script's own functions, sourced, with the commands that reach RabbitMQ and AWS replaced by
    shell functions that append each call to a file: for failure paths real nodes cannot show on demand."""
    calls = tmp_path / "calls"
    calls.touch()
    done = subprocess.run(
        ["bash", "-c", f'set -Eeuo pipefail; source "$1"; CALLS={calls}\n{stubs}\n{steps}', "bash",
         str(BOOTSTRAP_SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, **SETTINGS, "POLL_SECONDS": "0"},
        timeout=60,
        check=False,
    )  # fmt: skip
    return done.returncode, calls.read_text().splitlines(), done.stderr


# A 3.10 cluster of old (leaving), b, c and a spare d; queue q has members old, b, c, all running. The
# first cluster_status fails; add_member fails (the queue was deleted meanwhile). The membership the stubs
# show never changes, so the regrow after the leave is not waited for (SYNC_TIMEOUT=0).
LEAVING_STUBS = """
imds() { case $1 in autoscaling/target-lifecycle-state) echo Terminated ;; *) echo old ;; esac; }
start_heartbeats() { sleep 120 >/dev/null & echo "$!"; }
lifecycle_action() { echo "lifecycle $*" >>"$CALLS"; }
count() { echo "$1" >>"$CALLS.count"; grep -cxF -- "$1" "$CALLS.count"; }
ctl() {
    echo "ctl $*" >>"$CALLS"
    case $2 in
        cluster_status) (($(count status) > 1)) || return 69
            echo '{"running_nodes": ["rabbit@old", "rabbit@b", "rabbit@c", "rabbit@d"]}' ;;
        list_vhosts) echo '[{"name": "/"}]' ;;
        list_queues) echo '[{"name": "q", "type": "quorum", "members": ["rabbit@old", "rabbit@b", "rabbit@c"],
            "online": ["rabbit@old", "rabbit@b", "rabbit@c"], "slave_pids": "", "synchronised_slave_pids": ""}]' ;;
        eval) echo "status:$(base64 -w0 <<<'{"vhost": "/", "name": "q", "status": [
            {"Node Name": "rabbit@b", "Raft State": "leader", "Log Index": 9, "Commit Index": 9},
            {"Node Name": "rabbit@c", "Raft State": "follower", "Log Index": 9, "Commit Index": 9}]}')"
            echo ok ;;
    esac
}
queues_ctl() {
    echo "queues $*" >>"$CALLS"
    case $2 in
        add_member) echo "Error: {:not_found, q}" >&2; return 69 ;;
    esac
}
upgrade_ctl() {
    echo "upgrade $*" >>"$CALLS"
    local reading
    [[ $2 == await_online_quorum_plus_one ]] || return 0
    reading=$(count critical) # the first (before the grow) passes; then critical until CRITICAL_READINGS
    ((reading == 1 || reading > CRITICAL_READINGS))
}
"""


@pytest.mark.parametrize(("critical_readings", "deadline"), [(3, "60"), (1000, "2")])
def test_a_failed_grow_or_check_never_skips_the_safety_wait_and_a_critical_node_does_not_drain(
    tmp_path: Path, critical_readings: int, deadline: str
) -> None:
    """aws-3 #1 / ops-3 #1: the first cluster_status fails (the leave is asked again, not completed), the
    grow's add_member fails (the queue was deleted): the node still waits while RabbitMQ counts it
    quorum-critical, and only then drains, shrinks and leaves; one still critical at the deadline never
    drains or shrinks. CONTINUE is completed once, last."""
    steps = (
        f"CRITICAL_READINGS={critical_readings} LEAVE_DEADLINE_SECONDS={deadline} "
        "SYNC_TIMEOUT=0 LIFECYCLE_HOOK_NAME=rabbitmq-leave-cluster watch_lifecycle"
    )
    code, calls, log = _stubbed_run(tmp_path, LEAVING_STUBS, steps)
    assert code == 0, log
    kinds = [" ".join(call.split()[:3:2]) for call in calls]  # "ctl cluster_status", "queues add_member", ...
    assert kinds[-1] == "lifecycle complete-lifecycle-action" and kinds.count(kinds[-1]) == 1, calls
    assert "may not leave yet: asking again" in log and "growing //q onto rabbit@d failed" in log, log
    add = kinds.index("queues add_member")
    assert "--timeout" in calls[add]
    critical = [i for i, kind in enumerate(kinds) if kind == "upgrade await_online_quorum_plus_one"]
    assert critical and critical[-1] > add
    if critical_readings < 1000:
        assert len(critical) == critical_readings + 1, calls
        assert kinds.index("upgrade drain") > critical[-1] and "queues shrink" in kinds, calls
    else:
        assert "upgrade drain" not in kinds and "queues shrink" not in kinds, calls
        assert "still quorum- or sync-critical" in log and "leaving failed" in log, log


def test_a_boot_that_fails_after_joining_leaves_the_cluster_before_it_stops(tmp_path: Path) -> None:
    """aws-3 #3: a failure after the join (here the admin user) removes the node's quorum members through a
    peer, stops it and has the peer forget it before the launch action is abandoned: no stale member."""
    stubs = """
        systemctl() { echo "systemctl $*" >>"$CALLS"; }
        signal_cloudformation() { :; }
        complete_launch() { echo "complete_launch $*" >>"$CALLS"; }
        ctl() {
            echo "ctl $1 $2" >>"$CALLS"
            [[ $2 != cluster_status ]] || echo '{"running_nodes": ["rabbit@new", "rabbit@b", "rabbit@c"]}'
        }
        queues_ctl() { echo "queues $1 $2 $3" >>"$CALLS"; }
        ensure_admin_user() { return 1; }
    """
    steps = "trap 'on_error $LINENO' ERR; ME=rabbit@new; ensure_admin_user rabbit@new"
    code, calls, log = _stubbed_run(tmp_path, stubs, steps)
    assert code == 1 and "leaves it again" in log, log
    assert calls == [
        "ctl rabbit@new cluster_status",
        "queues rabbit@b shrink rabbit@new",
        "ctl rabbit@new stop_app",
        "ctl rabbit@b forget_cluster_node",
        "systemctl stop rabbitmq-server",
        "complete_launch ABANDON",
    ]


def test_the_installed_script_is_the_same_program_without_its_comment_lines(tmp_path: Path) -> None:
    """The user data carries the script without comment lines (EC2's 16 KB): every function and value is
    unchanged (bash prints functions without comments, heredocs and quoted strings included)."""
    installed = tmp_path / "rabbitmq-node"
    installed.write_text(without_comment_lines(BOOTSTRAP_SCRIPT.read_text()))
    values = "SETTINGS_FILE DATA_DIR CONF_DIR IMDS SIGNING_KEYS MIRRORS_UNSYNCHRONISED"
    as_written, as_installed = (
        subprocess.run(
            ["bash", "-c", f'source "$1"; declare -f; declare -p {values}', "bash", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for path in (BOOTSTRAP_SCRIPT, installed)
    )
    assert as_written == as_installed and "caught_up_members ()" in as_installed
    text = "#!/bin/bash\na\n  # b\n#\n## conf\nc # d\n"
    assert without_comment_lines(text) == "#!/bin/bash\na\n## conf\nc # d\n"


def test_cluster_figures_count_members_not_running_and_partitions() -> None:
    status = {
        "disk_nodes": ["a", "b", "c", "gone"],
        "running_nodes": ["a", "b", "c"],
        "partitions": {"a": ["c"]},
        "maintenance_status": {"a": "not under maintenance", "b": "under maintenance"},
    }
    data = json.loads(render("render_cluster_metric_data", stdin=json.dumps(status)))
    values = {d["MetricName"]: d["Value"] for d in data}
    assert values == {
        "RunningNodes": 3,
        "ClusterMembers": 4,
        "MembersNotRunning": 1,
        "Partitions": 1,
        "NodesInMaintenance": 1,
    }
    assert all(d["Dimensions"] == [{"Name": "ClusterName", "Value": "conf-test"}] for d in data)


def test_logs_are_shipped_to_the_stacks_log_group() -> None:
    config = json.loads(render("render_cloudwatch_agent_config", env={"LOG_GROUP_NAME": "/rabbitmq/x"}))
    files = config["logs"]["logs_collected"]["files"]["collect_list"]
    assert {f["file_path"] for f in files} == {
        "/var/log/rabbitmq/*.log",
        "/var/log/rabbitmq-node.log",
        "/var/log/cloud-init-output.log",
    }
    assert {f["log_group_name"] for f in files} == {"/rabbitmq/x"}


def test_the_data_volume_is_required_never_optional() -> None:
    # The cookie and the node's identity live on it: without it the broker must not start on the root disk.
    script = BOOTSTRAP_SCRIPT.read_text()
    assert "nofail" not in script.replace("No nofail", "")
    assert "defaults,noatime 0 2" in script
    assert (
        "RequiresMountsFor=%s" in script and '"$DATA_DIR"' in script.split("RequiresMountsFor=%s", 1)[1][:80]
    )


def test_the_lifecycle_service_runs_the_hook_handler() -> None:
    unit = render("render_lifecycle_service")
    assert "ExecStart=/usr/local/sbin/rabbitmq-node watch-lifecycle" in unit
    assert "Restart=on-failure" in unit


@pytest.mark.parametrize(
    ("answer", "logged"),
    [
        ("", "launch action completed: CONTINUE"),
        # The instances of the stack's creation: the hook is created after the group, they have no action.
        ("No active Lifecycle Action found with instance ID i-0abc", "no launch action to complete"),
    ],
)
def test_the_launch_action_is_completed_once_with_the_nodes_own_group_hook_and_instance(
    tmp_path: Path, answer: str, logged: str
) -> None:
    calls = tmp_path / "aws-calls"
    steps = f"""
        imds() {{ echo i-0abc; }}
        auto_scaling_group() {{ echo rabbitmq-nodes; }}
        aws() {{ printf '%s\\n' "$*" >>{calls}; [[ -z "{answer}" ]] || {{ echo "{answer}" >&2; return 254; }}; }}
        LAUNCH_HOOK_NAME=rabbitmq-join-cluster complete_launch CONTINUE
    """
    done = subprocess.run(
        ["bash", "-c", f'set -Eeuo pipefail; source "$1"; {steps}', "bash", str(BOOTSTRAP_SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, **SETTINGS},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and logged in done.stderr, done.stderr
    assert calls.read_text().splitlines() == [
        "autoscaling complete-lifecycle-action --auto-scaling-group-name rabbitmq-nodes --lifecycle-hook-name "
        "rabbitmq-join-cluster --instance-id i-0abc --lifecycle-action-result CONTINUE"
    ]


def test_the_metrics_timer_runs_the_installed_script_every_minute() -> None:
    assert "ExecStart=/usr/local/sbin/rabbitmq-node metrics" in render("render_metrics_service")
    assert "OnUnitActiveSec=1min" in render("render_metrics_timer")


# --- a real node started with the rendered configuration --------------------------------------------


@dataclass
class LocalNode:
    """A RabbitMQ node on loopback, started by this module with the rendered configuration."""

    env: dict[str, str]
    log: Path

    def ctl(self, *args: str, stdin: str | None = None, tool: str = "rabbitmqctl") -> str:
        done = subprocess.run(
            [str(RABBITMQ_BIN / tool), "-n", NODE, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{tool} {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def api(
        self,
        path: str,
        user: str = ADMIN["username"],
        password: str = ADMIN["password"],
        method: str = "GET",
        body: object = None,
    ) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{MANAGEMENT_PORT}{path}", data=data, method=method
        )
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return json.loads(raw) if raw else None


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _local_conf() -> str:
    conf = render("render_rabbitmq_conf")
    replacements = {
        "cluster_formation.peer_discovery_backend = aws": "cluster_formation.peer_discovery_backend = classic_config",
        "listeners.tcp.default = 5672": f"listeners.tcp.local = 127.0.0.1:{AMQP_PORT}",
        "management.tcp.port = 15672": f"management.tcp.port = {MANAGEMENT_PORT}\nmanagement.tcp.ip = 127.0.0.1",
    }
    for line, local in replacements.items():
        assert line in conf.splitlines(), f"the rendered conf lost the line {line!r}"
        conf = conf.replace(line, local)
    return conf


def _stop(process: subprocess.Popen[bytes], deadline: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists() or not shutil.which("epmd"):
        pytest.fail("rabbitmq-server is not installed (make system-deps installs Debian's package)")
    busy = [p for p in (AMQP_PORT, MANAGEMENT_PORT, DIST_PORT, EPMD_PORT) if _port_in_use(p)]
    if busy:
        pytest.fail(f"loopback ports {busy} are in use; this test needs them for its own node")

    base = tmp_path_factory.mktemp("rabbitmq-conf-node")
    (base / "home").mkdir()
    (base / "rabbitmq.conf").write_text(_local_conf())
    (base / "enabled_plugins").write_text(render("render_enabled_plugins"))
    env = {
        **os.environ,
        "HOME": str(base / "home"),
        "RABBITMQ_NODENAME": NODE,
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "node.pid"),
        "RABBITMQ_DIST_PORT": str(DIST_PORT),
        "ERL_EPMD_PORT": str(EPMD_PORT),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}",
        "RABBITMQ_CTL_ERL_ARGS": "-start_epmd false",
    }
    log = base / "server.log"
    epmd = subprocess.Popen(["epmd", "-port", str(EPMD_PORT), "-address", "127.0.0.1"], env=env)
    with log.open("wb") as out:
        server = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=env, stdout=out, stderr=out)
    local = LocalNode(env, log)
    try:
        deadline = time.monotonic() + 90
        while not (base / "node.pid").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the node did not start with the rendered conf:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=0.5)  # a bounded wait on the server itself, not a bare sleep
        local.ctl("wait", str(base / "node.pid"), "--timeout", "90")
        yield local
    finally:
        deadline = time.monotonic() + 60
        if server.poll() is None:
            subprocess.run(
                [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", NODE, "shutdown"],
                env=env,
                capture_output=True,
                timeout=60,
                check=False,
            )
        _stop(server, deadline)
        _stop(epmd, time.monotonic() + 10)


def test_rendered_conf_boots_a_node_with_the_aws_keys_parsed(node: LocalNode) -> None:
    formation = node.ctl("eval", "application:get_env(rabbit, cluster_formation).")
    assert "peer_discovery_aws" in formation
    assert "{aws_autoscaling,true}" in formation and "{aws_use_private_ip,false}" in formation
    assert '{aws_ec2_region,"eu-west-1"}' in formation
    assert node.ctl("eval", "rabbit_nodes:cluster_name().").strip() == '<<"conf-test">>'
    assert node.ctl("eval", "application:get_env(rabbit, cluster_partition_handling).").strip() == (
        "{ok,pause_minority}"
    )
    plugins = node.ctl("list", "--enabled", "--minimal", tool="rabbitmq-plugins").split()
    assert {"rabbitmq_management", "rabbitmq_peer_discovery_aws"} <= set(plugins)


def test_admin_user_and_ha_policy_are_applied_by_the_script(node: LocalNode) -> None:
    secret = json.dumps(ADMIN)
    # The script's own functions against the node; only the Secrets Manager read is stubbed.
    steps = f"""
        rabbitmqctl() {{ "{RABBITMQ_BIN}/rabbitmqctl" "$@"; }}
        secret_string() {{ printf '%s' '{secret}'; }}
        ensure_admin_user {NODE}
        ensure_admin_user {NODE}
        apply_default_policy {NODE}
        apply_default_policy {NODE}
    """
    done = subprocess.run(
        ["bash", "-c", f'source "$1"; {steps}', "bash", str(BOOTSTRAP_SCRIPT)],
        capture_output=True,
        text=True,
        env={**node.env, **SETTINGS},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ADMIN["password"] not in done.stdout + done.stderr

    whoami = node.api("/api/whoami")
    assert isinstance(whoami, dict) and "administrator" in str(whoami["tags"])
    users = node.api("/api/users")
    assert isinstance(users, list) and [u["name"] for u in users] == ["admin"]  # guest is gone
    policies = node.api("/api/policies/%2F")
    assert isinstance(policies, list) and len(policies) == 1
    assert policies[0]["name"] == "ha-all" and policies[0]["pattern"] == ".*"
    assert policies[0]["definition"] == {"ha-mode": "all", "ha-sync-mode": "automatic"}


def test_metric_data_from_the_real_node_status(node: LocalNode) -> None:
    status = node.ctl("-q", "status", "--formatter", "json", tool="rabbitmq-diagnostics")
    data = json.loads(render("render_metric_data", stdin=status))
    values = {d["MetricName"]: d["Value"] for d in data}
    assert set(values) == {"MemoryUsedOfWatermark", "DiskFreeOverLimit", "MemoryAlarm", "DiskAlarm"}
    assert 0 < values["MemoryUsedOfWatermark"] < 100
    assert values["DiskFreeOverLimit"] > 0
    assert values["MemoryAlarm"] == 0 and values["DiskAlarm"] in (0, 1)
    assert all(d["Dimensions"] == [{"Name": "ClusterName", "Value": "conf-test"}] for d in data)


def test_the_balancer_user_reads_and_writes_policies_but_touches_no_message(
    node: LocalNode, tmp_path: Path
) -> None:
    admin, balancer = json.dumps(ADMIN), json.dumps(BALANCER)
    steps = f"""
        rabbitmqctl() {{ "{RABBITMQ_BIN}/rabbitmqctl" "$@"; }}
        secret_string() {{ if [[ $1 == balancer ]]; then printf '%s' '{balancer}'; else printf '%s' '{admin}'; fi; }}
        ensure_admin_user {NODE}
        ensure_balancer_user {NODE}
        ctl {NODE} add_vhost later
        grant_balancer_vhosts {NODE}  # what the metrics timer runs each minute
        grant_balancer_vhosts {NODE}
    """
    done = subprocess.run(
        ["bash", "-c", f'source "$1"; {steps}', "bash", str(BOOTSTRAP_SCRIPT)],
        capture_output=True,
        text=True,
        env={
            **node.env,
            **SETTINGS,
            "BALANCER_SECRET_ARN": "balancer",
            "BALANCER_USER_FILE": str(tmp_path / "balancer-user"),
        },
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert BALANCER["password"] not in done.stdout + done.stderr
    user, password = BALANCER["username"], BALANCER["password"]
    node.api("/api/queues/%2F/orders", method="PUT", body={"durable": True})
    # Every vhost, the one created after the user too; every queue; its own policies.
    permissions = node.api(f"/api/users/{user}/permissions")
    assert isinstance(permissions, list) and {p["vhost"] for p in permissions} == {"/", "later"}
    queues = node.api("/api/queues", user, password)
    assert isinstance(queues, list) and [q["name"] for q in queues] == ["orders"]
    policy = {"pattern": "^orders$", "definition": {"ha-mode": "all"}, "apply-to": "queues", "priority": 9}
    node.api("/api/policies/%2F/queue-balancer-test", user, password, method="PUT", body=policy)
    # The cluster lock is a global parameter: policymaker may write it. Queue actions (an explicit mirror
    # sync, 3.x) are administrator-only: the README says when an existing cluster's user needs that tag.
    with pytest.raises(urllib.error.HTTPError, match="401"):
        node.api("/api/queues/%2F/orders/actions", user, password, method="POST", body={"action": "sync"})
    node.api("/api/policies/%2F/queue-balancer-test", user, password, method="DELETE")
    lock = {"name": LOCK_PARAMETER, "value": {"run_id": "probe"}}
    node.api(f"/api/global-parameters/{LOCK_PARAMETER}", user, password, method="PUT", body=lock)
    node.api(f"/api/global-parameters/{LOCK_PARAMETER}", user, password, method="DELETE")
    # Exact counts by a passive declare work; publishing and consuming are refused.
    parameters = pika.ConnectionParameters(
        "127.0.0.1", AMQP_PORT, credentials=pika.PlainCredentials(user, password)
    )
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        assert channel.queue_declare("orders", passive=True).method.message_count == 0
        channel.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
            channel.basic_publish("", "orders", b"not allowed")
    with (
        pika.BlockingConnection(parameters) as connection,
        pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"),
    ):
        connection.channel().basic_get("orders")


def test_a_lone_node_never_counts_as_a_member(node: LocalNode) -> None:
    """The signal condition: alone (no peer answers), a node of a 3-node cluster fails instead of forming."""
    steps = f"""
        rabbitmqctl() {{ "{RABBITMQ_BIN}/rabbitmqctl" "$@"; }}
        peer_nodes() {{ printf '%s\\n' {NODE} rabbit@nowhere-1 rabbit@nowhere-2; }}
        join_cluster {NODE}
    """
    done = subprocess.run(
        ["bash", "-c", f'source "$1"; {steps}', "bash", str(BOOTSTRAP_SCRIPT)],
        capture_output=True,
        text=True,
        env={**node.env, **SETTINGS, "NODE_COUNT": "3", "JOIN_TIMEOUT": "2", "POLL_SECONDS": "1"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{NODE} did not reach a cluster with 2 running node(s)" in done.stderr
