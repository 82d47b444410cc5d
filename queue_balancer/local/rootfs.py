"""RabbitMQ 4 for the local cluster: Debian 13 (trixie)'s ``rabbitmq-server`` in a root file system built
once per machine with ``debootstrap`` and shared by every checkout and test run.

Why a chroot: Debian 12 ships RabbitMQ 3.10 only; trixie ships 4.0.5 on Erlang 27, from the same package
mirror this machine already uses. The build (about a minute, 390 MB) happens under a file lock, into a
temporary directory renamed into place only when complete, so two builds never race and an interrupted one
never looks finished.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from queue_balancer.local.layout import LocalClusterError
from queue_balancer.local.locking import exclusive_lock

ENV_ROOTFS_DIR = "QUEUE_BALANCER_ROOTFS_DIR"
SUITE = "trixie"
PACKAGES = ("rabbitmq-server", "procps", "iproute2")
COMPLETE_MARKER = ".queue-balancer-rootfs"
_FALLBACK_MIRROR = "http://deb.debian.org/debian"
_MIRROR_LINE = re.compile(r"^\s*(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", re.MULTILINE)


def rootfs_dir() -> Path:
    """Where the RabbitMQ 4 root file system lives: ``$QUEUE_BALANCER_ROOTFS_DIR``, else a machine-wide cache."""
    configured = os.environ.get(ENV_ROOTFS_DIR)
    if configured:
        return Path(configured).expanduser().absolute()
    return Path("/var/cache/queue-balancer/trixie-rabbitmq4")


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (first non-security URI), so the build needs no new route."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in _MIRROR_LINE.findall(text):
            if uri.startswith(("http://", "https://")) and "security" not in uri:
                return str(uri).rstrip("/")
    return _FALLBACK_MIRROR


def ensure_rootfs(
    progress: Callable[[str], None], *, root: Path | None = None, timeout: float = 900.0
) -> Path:
    """The built root file system, building it first if needed (once per machine, under a lock)."""
    root = root or rootfs_dir()
    if (root / COMPLETE_MARKER).exists():
        return root
    if os.geteuid() != 0:
        raise LocalClusterError(
            f"RabbitMQ 4 runs from a Debian {SUITE} root file system at {root}, which is not built yet; "
            "building it (debootstrap, chroot) needs root: run `sudo queue-balancer local up --rabbitmq 4` once"
        )
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.access(debootstrap, os.X_OK):
        raise LocalClusterError(
            "debootstrap is not installed: apt-get install debootstrap (or `make system-deps`)"
        )
    with exclusive_lock(root.with_name(root.name + ".lock"), wait=timeout, holder="another RabbitMQ 4 build"):
        if (root / COMPLETE_MARKER).exists():
            return root  # built by whoever held the lock before us
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        mirror = debian_mirror()
        progress(
            f"building the RabbitMQ 4 root file system (Debian {SUITE} from {mirror}) in {root}; once per machine"
        )
        started = time.monotonic()
        log = root.with_name(root.name + ".build.log")
        with open(log, "wb") as out:
            try:
                done = subprocess.run(
                    [
                        debootstrap,
                        "--variant=minbase",
                        f"--include={','.join(PACKAGES)}",
                        SUITE,
                        str(partial),
                        mirror,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise LocalClusterError(
                    f"debootstrap did not finish within {timeout:g} s; see {log}"
                ) from exc
        if done.returncode != 0:
            raise LocalClusterError(f"debootstrap failed with exit code {done.returncode}; see {log}")
        (partial / COMPLETE_MARKER).write_text(f"{SUITE} {' '.join(PACKAGES)} from {mirror}\n")
        if root.exists():
            shutil.rmtree(root)  # an incomplete leftover without the marker
        partial.rename(root)
        progress(f"root file system ready ({time.monotonic() - started:.0f} s)")
    return root


def main() -> int:
    """``python3 -m queue_balancer.local.rootfs``: build the root file system now, with the standard library
    only. ``make test`` starts it before the virtualenv's install and the linters, so the download overlaps
    them instead of holding up the worker that runs the RabbitMQ 4 tests (they wait on the build's lock)."""
    try:
        print(ensure_rootfs(print))
    except LocalClusterError as exc:
        print(f"queue-balancer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
