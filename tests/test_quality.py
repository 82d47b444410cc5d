"""The gates `make check` runs, enforced in CI too: ruff everywhere, mypy --strict on the core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_is_clean() -> None:
    done = _run(str(BIN / "ruff"), "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_is_clean_on_the_core() -> None:
    done = _run(str(BIN / "mypy"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_core_imports_no_aws_sdk() -> None:
    core = [
        "counts",
        "lifecycle",
        "model",
        "planner",
        "flow",
        "movers",
        "management",
        "report",
        "runner",
        "leader_transfer",
        "errors",
    ]
    for module in core:
        source = (ROOT / "queue_balancer" / f"{module}.py").read_text()
        assert "boto3" not in source and "botocore" not in source, module
