"""Small ASL files and handler modules the contract and bundling tests build of their own."""

from __future__ import annotations

import json
from pathlib import Path


def write_asl(tmp_path: Path, *placeholders: str) -> str:
    states = {
        f"S{i}": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"X": f"${{{p}}}"},
        }
        for i, p in enumerate(placeholders)
    }
    return json.dumps({"StartAt": "S0", "States": states})


def write_module(
    directory: Path, name: str, body: str = "def handler(event, context):\n    return event\n"
) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.py").write_text(body)
