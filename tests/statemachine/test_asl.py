"""The ASL file itself: lint-clean, every Lambda placeholder backed by a handler, every state covered."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lambdas
from queue_balancer.contract import function_names, handler_path, substitute

# States that may not lead to Cleanup: the ones before the lock is taken, the failure path itself, and
# the ones after the lock is released (another run may own the cluster's policies by then).
NO_CLEANUP = {
    "ValidateInput",
    "AcquireLock",
    "FinishRun",
    "Cleanup",
    "NotifyFailure",
    "NotifyCleanupFailed",
    "MarkFailed",
    "ReleaseLockAfterFailure",
    "ReleaseLockAfterRefusal",  # a CLI run holds the cluster: its policies are not this run's
    "NotifySkipped",  # another run holds the cluster: nothing of this run to undo
    "ReleaseLock",
}
PLACEHOLDER_VALUES = {
    "LifecycleTableName": "table",
    "NotificationTopicArn": "arn:aws:sns:us-east-1:123456789012:t",
}


def definition(asl_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(asl_path.read_text())
    return data


def substituted(asl_path: Path) -> str:
    text = asl_path.read_text()
    values = dict(PLACEHOLDER_VALUES)
    values.update(
        {
            f"{n}FunctionArn": f"arn:aws:lambda:us-east-1:123456789012:function:{n}"
            for n in function_names(text)
        }
    )
    return substitute(text, values)


def test_statelint_passes(asl_path: Path, tmp_path: Path) -> None:
    """statelint needs real ARNs where the placeholders stand (the stack substitutes them on deploy)."""
    linted = tmp_path / "balancer.asl.json"
    linted.write_text(substituted(asl_path))
    statelint = Path(sys.executable).parent / "statelint"
    done = subprocess.run([str(statelint), str(linted)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    raw = subprocess.run(
        [str(statelint), "--ignore", "URI", str(asl_path)], capture_output=True, text=True, check=False
    )
    assert raw.returncode == 0, raw.stdout + raw.stderr


def test_every_placeholder_has_a_handler_module_and_every_handler_module_a_placeholder(
    asl_path: Path,
) -> None:
    names = function_names(asl_path.read_text())
    for name in names:
        module, attribute = handler_path(name).rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attribute)), name
    handler_modules = {
        info.name
        for info in pkgutil.iter_modules(lambdas.__path__)
        if hasattr(importlib.import_module(f"lambdas.{info.name}"), "handler")
    }
    assert handler_modules == {handler_path(n).split(".")[1] for n in names}


def test_only_known_placeholders(asl_path: Path) -> None:
    found = set(re.findall(r"\$\{(\w+)\}", asl_path.read_text()))
    assert {p for p in found if not p.endswith("FunctionArn")} == set(PLACEHOLDER_VALUES)


def test_every_task_is_caught_and_every_catch_of_a_locked_state_cleans_up(asl_path: Path) -> None:
    machine = definition(asl_path)
    assert machine["QueryLanguage"] == "JSONPath"
    top = machine["States"]
    for name, state in top.items():
        if state["Type"] != "Task":
            continue
        catchers = state.get("Catch", [])
        assert catchers and catchers[-1]["ErrorEquals"] == ["States.ALL"], f"{name} has no catch-all"
        targets = {c["Next"] for c in catchers}
        if name not in NO_CLEANUP:
            assert "Cleanup" in targets, f"{name} must lead to Cleanup"
        else:
            assert "Cleanup" not in targets or name == "ReleaseLock", f"{name} must not run Cleanup"
    assert not [n for n, s in top.items() if s["Type"] in ("Map", "Parallel")], "moves run inside RunBatch"


def test_a_batch_runs_in_slices_and_only_long_syncs_loop_through_a_wait(asl_path: Path) -> None:
    states = definition(asl_path)["States"]
    assert states["RunBatch"]["Next"] == "BatchRoute"
    assert states["RunBatch"]["ResultPath"] == "$.run"
    route = states["BatchRoute"]
    assert route["Choices"] == [
        {"Variable": "$.run.next", "StringEquals": "wait_batch", "Next": "WaitForBatch"}
    ]
    assert route["Default"] == "ControlCheck"
    assert states["WaitForBatch"]["SecondsPath"] == "$.run.wait"
    assert states["WaitForBatch"]["Next"] == "RunBatch"
    waits = [n for n, s in states.items() if s["Type"] == "Wait"]
    assert waits == ["WaitForBatch"]


def test_direct_integrations_for_lock_notification_and_continuation(asl_path: Path) -> None:
    states = definition(asl_path)["States"]
    assert states["AcquireLock"]["Resource"] == "arn:aws:states:::dynamodb:putItem"
    assert "ConditionExpression" in states["AcquireLock"]["Parameters"]
    assert states["Notify"]["Resource"] == "arn:aws:states:::sns:publish"
    assert states["ContinueAsNew"]["Parameters"]["StateMachineArn.$"] == "$$.StateMachine.Id"
    for parked in ("WaitForGo", "Pause"):
        assert states[parked]["Resource"] == "arn:aws:states:::lambda:invoke.waitForTaskToken"
