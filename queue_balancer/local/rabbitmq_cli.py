"""Running RabbitMQ's Erlang CLI tools (``rabbitmqctl``, ``rabbitmq-queues``) against a local cluster.

Every call carries the cluster's cookie (through HOME), epmd port and loopback-only distribution, has a
deadline, and turns a failure into one error that names the command (with the admin password masked).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from queue_balancer.local.environment import cli_env
from queue_balancer.local.layout import LocalClusterError
from queue_balancer.local.procfs import port_accepts
from queue_balancer.local.runtime import Runtime

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"


def require_rabbitmq(server: Path = RABBITMQ_SERVER) -> None:
    """Fail with the install command when Debian's rabbitmq-server is missing."""
    if not os.access(server, os.X_OK):
        raise LocalClusterError(
            "rabbitmq-server is not installed: apt-get install rabbitmq-server (Debian 12 ships 3.10)"
        )


class RabbitmqCli:
    """The CLI tools bound to one cluster (its HOME, epmd port) and its admin password (masked in errors)."""

    def __init__(
        self, *, base_dir: Path, home: Path, epmd_port: int, password: str, runtime: Runtime
    ) -> None:
        self._runtime = runtime
        self._base_dir = base_dir
        self._home = home
        self._epmd_port = epmd_port
        self._password = password

    def __repr__(self) -> str:
        return f"RabbitmqCli({self._base_dir})"

    def env(self) -> dict[str, str]:
        """The environment of a CLI call against this cluster."""
        return self._runtime.environment(
            cli_env(base_dir=self._base_dir, home=self._home, epmd_port=self._epmd_port)
        )

    def run(self, tool: str, args: tuple[str, ...], node_name: str, timeout: float) -> str:
        """Run ``<tool> -n <node_name> args...``; return stdout, or raise with the command and its output."""
        if self._runtime.root is None:
            require_rabbitmq()
        if not port_accepts(self._epmd_port):
            # The CLI would start an `epmd -daemon` of its own on our port, which outlives the cluster
            # and blocks its next `up` (seen: a workflow thread's eval after a failed test's teardown).
            raise LocalClusterError(
                f"`{tool}` not run: this cluster's epmd (127.0.0.1:{self._epmd_port}) is not running; "
                "start the cluster first (`queue-balancer local up`)"
            )
        command = [str(RABBITMQ_BIN / tool), "-n", node_name, *args]
        try:
            done = subprocess.run(
                self._runtime.command(command, base_dir=self._base_dir, cwd=self._base_dir),
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalClusterError(f"`{self._shell(command)}` did not finish within {timeout:g} s") from exc
        if done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip())[-2000:]
            raise LocalClusterError(
                f"`{self._shell(command)}` failed with exit code {done.returncode}: {detail}"
            )
        return done.stdout

    def eval_command(self, node_name: str) -> str:
        """The shell command that runs ``rabbitmqctl eval`` against this cluster, for ``--eval-command``."""
        env = [
            f"{k}={v}"
            for k, v in sorted(self.env().items())
            if k.startswith(("RABBITMQ_", "ERL_")) or k == "HOME"
        ]
        command = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node_name, "eval"]
        return shlex.join(
            ["env", *env, *self._runtime.command(command, base_dir=self._base_dir, cwd=self._base_dir)]
        )

    def _shell(self, command: list[str]) -> str:
        """The command as a user would type it, with the admin password masked."""
        return " ".join("***" if arg == self._password else arg for arg in command)
