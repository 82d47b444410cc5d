"""The process environment of every node and CLI call of a local cluster: its HOME, epmd and no leaks.

Why one place: a node and the CLI that talks to it must agree on the cookie (through HOME), the epmd port
and the loopback-only distribution, and none of the caller's own RabbitMQ/Erlang settings may redirect
either of them to another cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

# Extra Erlang flags for every node and CLI call. The distribution listener is pinned to loopback here
# (and again through rabbitmq.conf) because the CLI reads no rabbitmq.conf; -start_epmd false makes a
# node fail loudly instead of spawning a stray epmd on 0.0.0.0 when ours is not running.
ERL_LOOPBACK_ARGS = "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"


def base_env(*, base_dir: Path, home: Path, epmd_port: int) -> dict[str, str]:
    """PATH and locale of the caller, this cluster's HOME (cookie) and epmd, nothing else RabbitMQ-ish."""
    # Inherit PATH and locale, but none of the caller's RabbitMQ/Erlang settings: a RABBITMQ_NODENAME
    # or ERL_EPMD_PORT exported in the user's shell must not redirect us to another cluster.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RABBITMQ_", "ERL_", "ERLANG_")) and k not in ("HOME", "CONF_ENV_FILE")
    }
    if not (env.get("LC_ALL") or env.get("LANG")):
        env["LANG"] = "C.UTF-8"  # the CLI warns (and mangles names) under a latin1 locale
    env.update(
        {
            "HOME": str(home),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Without this, /etc/rabbitmq/rabbitmq-env.conf would be sourced by scripts and nodes.
            "RABBITMQ_CONF_ENV_FILE": str(base_dir / "rabbitmq-env.conf"),
        }
    )
    return env


def cli_env(*, base_dir: Path, home: Path, epmd_port: int) -> dict[str, str]:
    """The environment of a ``rabbitmqctl``/``rabbitmq-queues`` call against this cluster."""
    env = base_env(base_dir=base_dir, home=home, epmd_port=epmd_port)
    # Port 0 = an ephemeral distribution port for each CLI call; the default 35672..35682 range is
    # shared with every other RabbitMQ CLI on the machine and runs out under parallel calls.
    env["RABBITMQ_CTL_DIST_PORT_MIN"] = "0"
    env["RABBITMQ_CTL_DIST_PORT_MAX"] = "0"
    env["RABBITMQ_CTL_ERL_ARGS"] = ERL_LOOPBACK_ARGS
    return env
