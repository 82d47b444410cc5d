"""What the kernel says about processes and loopback ports (read from /proc; no CLI call, no signal).

Why from /proc: ``down`` must signal only processes this cluster started, and a pid file alone cannot
prove that (pids are recycled); a port must be checked free before a node is started on it, and when it
is not, the user needs to know who holds it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from queue_balancer.local.layout import ENV_BASE_DIR

UNKNOWN_OWNER = " by another process"


def port_accepts(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def port_in_use(port: int) -> str | None:
    """None if 127.0.0.1:port can be bound; otherwise a description of who holds it (best effort)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR like the Erlang listeners: a socket in TIME_WAIT after `down` is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            pass
        else:
            return None
    owner = listener_owner(port)
    return f" by {owner}" if owner else UNKNOWN_OWNER


def listener_owner(port: int) -> str | None:
    """Which process listens on ``port`` (via /proc; None when not visible, e.g. another user's)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    cmdline = cmdline_of(int(proc.name))
                    if cmdline is None:
                        return None  # a process on its way out (a killed VM's threads): not an owner
                    home = arg_after(cmdline, "-home")
                    hint = ""
                    if home and home.endswith("/home"):
                        hint = (
                            f" - a RabbitMQ node of {home[: -len('/home')]}; if that is a local cluster, "
                            f"stop it with `{ENV_BASE_DIR}={home[: -len('/home')]} queue-balancer local down`"
                        )
                    return f"pid {proc.name} ({Path(cmdline[0]).name}){hint}"
    return None


def has_exited(pid: int) -> bool:
    """True once ``pid`` is gone or a zombie: it holds no memory, file or socket any more.

    Not the same as an empty command line: a killed VM loses its argv when its memory is unmapped,
    which on a loaded machine takes seconds, and only then closes its sockets and exits.
    """
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def cmdline_of(pid: int) -> list[str] | None:
    """The argv of a live process; None for a missing process, a zombie or one on its way out."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if has_exited(pid) or not raw:
        return None  # a zombie is not running, whatever kill(pid, 0) says
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def same_path(a: str | Path | None, b: str | Path) -> bool:
    """Equal after resolving symlinks: /proc reports resolved paths, users may pass linked ones."""
    return a is not None and Path(a).resolve() == Path(b).resolve()


def cwd_of(pid: int) -> Path | None:
    """The working directory of a process (None when it is gone or not ours to read)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def arg_after(cmdline: list[str], flag: str) -> str | None:
    """The argument that follows ``flag`` in ``cmdline``, if any."""
    with contextlib.suppress(ValueError, IndexError):
        return cmdline[cmdline.index(flag) + 1]
    return None


def wait_pid_exit(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` has exited (reaping it if it is our child); False at the deadline."""
    while True:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child (epmd, wrapper), or it lingers
        if has_exited(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process in bytes (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def owned_pid(
    pid_file: Path, *, base_dir: Path, home: Path, epmd_port: int, chroot: Path | None = None
) -> int | None:
    """The pid in ``pid_file`` if that process is alive and belongs to the cluster in ``base_dir``, else None.

    Ownership is checked on the command line (``-home <base_dir>/home`` for a node, our port for epmd,
    our node directory for the wrapper script), so a recycled pid is never signalled. A process in the
    ``chroot`` of RabbitMQ 4 reports its working directory below that root.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = cmdline_of(pid)
    if cmdline is None:
        return None
    if pid_file.name == "node.pid":
        node_home = arg_after(cmdline, "-home")
        owned = "beam" in cmdline[0] and node_home is not None and same_path(node_home, home)
    elif pid_file.name == "epmd.pid":
        owned = (
            "epmd" in cmdline[0]
            and arg_after(cmdline, "-port") == str(epmd_port)
            and same_path(cwd_of(pid), base_dir)
        )
    else:  # wrapper.pid: the rabbitmq-server shell script, started with cwd = its node directory
        cwd = cwd_of(pid)
        owned = any("rabbitmq-server" in arg for arg in cmdline) and (
            same_path(cwd, pid_file.parent)
            or (chroot is not None and same_path(cwd, chroot / pid_file.parent.relative_to("/")))
        )
    return pid if owned else None
