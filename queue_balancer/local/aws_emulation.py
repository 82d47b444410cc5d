"""The AWS emulation under the local endpoint: moto configured and patched, Lambda and SSM dispatched here.

moto's server (pinned to 5.2.x: the patches below touch its private parts) runs with Step Functions
execution switched on (moto's port of the ASL interpreter, JSONPath mode) and the no-Docker Lambda
backend, whose ``invoke`` is bound to a ``Dispatcher``: function name -> the handler in ``lambdas/`` that
the real function runs. A handler's exception becomes a function error carrying its ``errorType``, so
the ASL's Retry and Catch match exactly as on AWS. SSM Run Command on the nodes' instances is emulated
for exactly the one command the Lambdas send (``rabbitmqctl eval <expression>``), which runs on the
matching local node.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from queue_balancer.local.cluster import LocalCluster, LocalClusterError, LocalNode

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


# ---- the Lambda dispatcher -------------------------------------------------------------------------


@dataclass(frozen=True)
class InvocationContext:
    """The parts of the Lambda context object powertools and the handlers read."""

    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    log_group_name: str = ""
    log_stream_name: str = ""

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@dataclass
class Dispatcher:
    """Function name -> handler; moto's no-Docker Lambda backend calls ``invoke`` for every invocation."""

    handlers: dict[str, Callable[[Any, Any], Any]] = field(default_factory=dict)
    calls: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=10_000))
    """(function, "ok" | errorType) of the latest invocations, for the smoke test."""
    _running: int = field(default=0, repr=False)
    _last_start: float = field(default=0.0, repr=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def invoke(self, function_name: str, body: bytes | str | None, response_headers: dict[str, str]) -> bytes:
        name = function_name.split(":")[6] if function_name.startswith("arn:") else function_name
        handler = self.handlers.get(name)
        if handler is None:
            response_headers["x-amz-function-error"] = "Unhandled"
            self.calls.append((name, "ResourceNotFound"))
            return _error_document("ResourceNotFound", f"no handler is bound to function {name}")
        with self._changed:
            self._running += 1
            self._last_start = time.monotonic()
        try:
            event = json.loads(body or b"{}")
            result = handler(event, InvocationContext(function_name=name))
        except Exception as exc:  # the Lambda runtime's contract: any exception is a function error
            response_headers["x-amz-function-error"] = "Unhandled"
            self.calls.append((name, type(exc).__name__))
            return _error_document(type(exc).__name__, str(exc), traceback.format_exception(exc))
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()
        self.calls.append((name, "ok"))
        return json.dumps(result).encode()

    def await_idle(self, timeout: float, quiet: float = 0.5) -> bool:
        """Wait until no invocation runs and none started for ``quiet`` seconds (a stopped execution's Task
        goes on, as a Lambda does on AWS; one the interpreter was about to call may still come); False if
        that did not happen within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = time.monotonic()
                still = now - self._last_start
                if self._running == 0 and still >= quiet:
                    return True
                if now >= deadline:
                    return False
                self._changed.wait(min(deadline - now, max(quiet - still, 0.05)))


def _error_document(error_type: str, message: str, trace: list[str] | None = None) -> bytes:
    """What the Python Lambda runtime returns for an unhandled exception."""
    document = {"errorMessage": message, "errorType": error_type, "stackTrace": trace or []}
    return json.dumps(document).encode()


# ---- SSM Run Command on the local nodes -------------------------------------------------------------


@dataclass
class LocalRunCommand:
    """Runs ``rabbitmqctl eval <expression>`` sent to an instance on the local node that instance stands for.

    Nothing else: any other command line fails, as it would if the node had no such program.
    """

    cluster: LocalCluster
    instances: dict[str, LocalNode] = field(default_factory=dict)

    def run(self, instance_id: str, commands: list[str]) -> tuple[str, str, str]:
        """(status, stdout, stderr) as SSM reports them."""
        node = self.instances.get(instance_id)
        if node is None:
            return "Failed", "", f"instance {instance_id} is not a node of the local cluster"
        out: list[str] = []
        for line in commands:
            words = shlex.split(line)
            if len(words) != 3 or words[:2] != ["rabbitmqctl", "eval"]:
                return (
                    "Failed",
                    "\n".join(out),
                    f"the local endpoint runs only `rabbitmqctl eval <expression>`, not {line[:80]!r}",
                )
            try:
                out.append(self.cluster.eval_erlang(words[2], node=node))
            except LocalClusterError as exc:
                return "Failed", "\n".join(out), str(exc)
        return "Success", "\n".join(out) + "\n", ""


def render_run_command(document: Mapping[str, Any], parameters: Mapping[str, Any]) -> list[str]:
    """The ``runCommand`` lines of a schemaVersion 2.2 command document with ``{{ name }}`` filled in, after
    SSM's own checks (``allowedValues``, ``allowedPattern``): a value that fails them is refused, as
    ``SendCommand`` refuses it on AWS, before anything runs."""
    declared = document.get("parameters", {})
    values: dict[str, str] = {}
    for name, spec in declared.items():
        given = parameters.get(name, [spec.get("default", "")])
        value = given[0] if isinstance(given, list) else str(given)
        allowed, pattern = spec.get("allowedValues"), spec.get("allowedPattern")
        if (allowed is not None and value not in allowed) or (pattern and not re.fullmatch(pattern, value)):
            raise ValueError(f"parameter {name} of the document does not allow {value[:80]!r}")
        values[name] = value
    if unknown := set(parameters) - set(declared):
        raise ValueError(f"the document has no parameter(s) {', '.join(sorted(unknown))}")
    lines: list[str] = []
    for step in document["mainSteps"]:
        for line in step["inputs"]["runCommand"]:
            lines.append(re.sub(r"\{\{ *(\w+) *\}\}", lambda m: values[m.group(1)], line))
    return lines


# ---- moto, configured and patched ------------------------------------------------------------------


class MotoPatches:
    """Process-wide changes to moto (config, MOTO_PORT, three private methods), undone by ``restore``."""

    def __init__(self, port: int, dispatcher: Dispatcher, run_command: LocalRunCommand) -> None:
        from moto.awslambda_simple.models import LambdaSimpleBackend
        from moto.core.config import default_user_config
        from moto.ssm.exceptions import ValidationException
        from moto.ssm.models import SimpleSystemManagerBackend

        self._undo: list[Callable[[], None]] = []
        saved_sfn, saved_lambda = default_user_config.get("stepfunctions"), default_user_config.get("lambda")
        default_user_config["stepfunctions"] = {"execute_state_machine": True}
        default_user_config["lambda"] = {"use_docker": False}

        def restore_config() -> None:
            default_user_config["stepfunctions"] = saved_sfn or {"execute_state_machine": False}
            default_user_config["lambda"] = saved_lambda or {"use_docker": True}

        self._undo.append(restore_config)
        self._set_env("MOTO_PORT", str(port))

        original_invoke = LambdaSimpleBackend.invoke

        def invoke(
            backend: Any,
            function_name: str,
            qualifier: str | None,
            body: Any,
            headers: Any,
            response_headers: Any,
        ) -> bytes:
            return dispatcher.invoke(function_name, body, response_headers)

        setattr(LambdaSimpleBackend, "invoke", invoke)  # noqa: B010 - patching moto on purpose
        self._undo.append(lambda: setattr(LambdaSimpleBackend, "invoke", original_invoke))

        original_send = SimpleSystemManagerBackend.send_command

        def send_command(backend: Any, **kwargs: Any) -> Any:
            if not set(kwargs.get("instance_ids") or ()) & set(run_command.instances):
                # Not this endpoint's instances: another moto user in the same process (a unit test after
                # the session's endpoint started) gets moto's own SendCommand.
                return original_send(backend, **kwargs)
            name, given = kwargs.get("document_name"), kwargs.get("parameters") or {}
            if name == "AWS-RunShellScript":
                script = [str(c) for c in given.get("commands", [])]
            else:
                document = json.loads(backend.get_document(name, "", "", "JSON")["Content"])
                try:
                    script = render_run_command(document, given)
                except ValueError as exc:  # what SendCommand answers for a parameter the document forbids
                    raise ValidationException(str(exc)) from exc
            command = original_send(backend, **kwargs)
            for invocation in command.invocations:
                status, out, err = run_command.run(invocation["InstanceId"], script)
                invocation.update(
                    {
                        "Status": status,
                        "StatusDetails": status,
                        "ResponseCode": 0 if status == "Success" else 1,
                        "StandardOutputContent": out,
                        "StandardErrorContent": err,
                    }
                )
                if status != "Success":
                    command.status = "Failed"
            return command

        setattr(SimpleSystemManagerBackend, "send_command", send_command)  # noqa: B010
        self._undo.append(lambda: setattr(SimpleSystemManagerBackend, "send_command", original_send))
        self._patch_start_execution()
        for noisy in ("werkzeug", "moto.stepfunctions"):
            self._set_level(noisy, logging.CRITICAL)

    def _patch_start_execution(self) -> None:
        """moto 5.2 passes ``states:startExecution``'s parameters to boto3 as written in the ASL
        (``StateMachineArn``, ``Name``, ``Input``, as AWS documents them), but boto3's names are
        ``stateMachineArn``, ``name``, ``input``: rename them, as AWS's own integration does."""
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (
            StateTaskServiceSfn,
        )

        original = StateTaskServiceSfn._normalise_parameters

        def normalise(service: Any, parameters: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            original(service, parameters, *args, **kwargs)
            for name in ("StateMachineArn", "Name", "Input", "TraceHeader"):
                if name in parameters:
                    parameters[name[0].lower() + name[1:]] = parameters.pop(name)

        setattr(StateTaskServiceSfn, "_normalise_parameters", normalise)  # noqa: B010
        self._undo.append(lambda: setattr(StateTaskServiceSfn, "_normalise_parameters", original))

    def _set_env(self, key: str, value: str) -> None:
        previous = os.environ.get(key)
        os.environ[key] = value
        self._undo.append(lambda: _restore_env(key, previous))

    def set_env(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._set_env(key, value)

    def _set_level(self, name: str, level: int) -> None:
        logger = logging.getLogger(name)
        previous = logger.level
        logger.setLevel(level)
        self._undo.append(lambda: logger.setLevel(previous))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _restore_env(key: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = previous
