"""Which RabbitMQ runs the local cluster, and how a node or CLI process is started with it.

"3": Debian's own ``rabbitmq-server`` (3.10 on Debian 12) run directly. "4": trixie's 4.0.5 from the root
file system of ``rootfs.py``, each process in a private mount namespace that bind-mounts the cluster's
directory at the same path and mounts its own /proc, then chroots. The namespace ends with its last
process, so nothing is ever left mounted on the host (``down`` has nothing to unmount) and paths, pids
and pid files read the same inside and outside.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from queue_balancer.local.layout import LocalClusterError

RABBITMQ_VERSIONS = ("3", "4")
# Inside the chroot: the same PATH a Debian login would have; the host's PATH means nothing there.
_CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_INNER = 'cd "$1" && shift && exec "$@"'
_OUTER = (
    'b=$1 r=$2 c=$3; shift 3; mount --bind "$b" "$r$b" && mount -t proc proc "$r/proc" && '
    f'exec chroot "$r" /bin/sh -c {shlex.quote(_INNER)} sh "$c" "$@"'
)


@dataclass(frozen=True)
class Runtime:
    """Where the RabbitMQ binaries are and how to start one of them against a cluster directory."""

    rabbitmq: str = "3"
    root: Path | None = None  # the chroot of RabbitMQ 4; None for the host's RabbitMQ

    def __post_init__(self) -> None:
        if self.rabbitmq not in RABBITMQ_VERSIONS:
            raise LocalClusterError(
                f"RabbitMQ {self.rabbitmq!r} is not available locally: choose {' or '.join(RABBITMQ_VERSIONS)}"
            )

    def command(self, argv: Sequence[str], *, base_dir: Path, cwd: Path) -> list[str]:
        """``argv`` as run for the cluster in ``base_dir`` with working directory ``cwd``."""
        if self.root is None:
            return list(argv)
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", _OUTER, "sh", str(base_dir), str(self.root), str(cwd), *argv,
        ]  # fmt: skip

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """The environment a process gets: the host's for RabbitMQ 3; for 4 only what the chroot can use."""
        if self.root is None:
            return env
        kept = {
            k: v
            for k, v in env.items()
            if k.startswith(("RABBITMQ_", "ERL_")) or k in ("HOME", "LANG", "LC_ALL")
        }
        return {**kept, "PATH": _CHROOT_PATH}

    def prepare(self, base_dir: Path) -> None:
        """Create the mount point of ``base_dir`` inside the chroot (the bind mount needs one)."""
        if self.root is not None:
            (self.root / base_dir.relative_to("/")).mkdir(parents=True, exist_ok=True)

    def host_path(self, path: Path) -> Path:
        """Where a path that a chrooted process reports (its cwd) lies on the host."""
        return path if self.root is None else self.root / path.relative_to("/")
