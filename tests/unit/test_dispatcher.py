"""The local endpoint's Lambda dispatcher: what it answers, and when it is idle (a stopped execution's Task
goes on as a Lambda does on AWS; test teardown waits for it)."""

from __future__ import annotations

import json
import threading
from typing import Any

from queue_balancer.local.aws_emulation import Dispatcher


def test_idle_only_once_no_invocation_runs_and_none_started_for_a_while() -> None:
    release = threading.Event()

    def slow(event: Any, context: Any) -> dict[str, Any]:
        release.wait(timeout=30)
        return {"echo": event}

    dispatcher = Dispatcher({"slow": slow})
    assert dispatcher.await_idle(timeout=1, quiet=0)  # nothing ever ran
    headers: dict[str, str] = {}
    answers: list[bytes] = []
    worker = threading.Thread(target=lambda: answers.append(dispatcher.invoke("slow", b'{"a": 1}', headers)))
    worker.start()
    try:
        assert not dispatcher.await_idle(timeout=0.3, quiet=0)  # one still runs
    finally:
        release.set()
        worker.join(timeout=30)
    assert not dispatcher.await_idle(timeout=0.05, quiet=5)  # just started: not quiet yet
    assert dispatcher.await_idle(timeout=5, quiet=0.2)
    assert json.loads(answers[0]) == {"echo": {"a": 1}} and headers == {}


def test_a_handler_error_is_a_function_error_and_leaves_the_dispatcher_idle() -> None:
    def broken(event: Any, context: Any) -> None:
        raise ValueError("injected")

    dispatcher = Dispatcher({"broken": broken})
    headers: dict[str, str] = {}
    answer = json.loads(dispatcher.invoke("arn:aws:lambda:us-east-1:1:function:broken", b"{}", headers))
    assert headers["x-amz-function-error"] == "Unhandled"
    assert (answer["errorType"], answer["errorMessage"]) == ("ValueError", "injected")
    assert dispatcher.await_idle(timeout=5, quiet=0)
    assert list(dispatcher.calls) == [("broken", "ValueError")]
