"""``rabbitmqctl eval`` on one cluster node through SSM Run Command: the Lambdas' leader-transfer port.

The Lambdas run in the cluster's VPC but not on a node, and RabbitMQ 3.10's HTTP API cannot move a
quorum leader (see ``queue_balancer.leader_transfer``). So the operation goes to one running instance
carrying the cluster's tag through the balancer's own command document (``queue_balancer.eval_document``:
an operation name and base64 items, validated by SSM; the document builds the ``rabbitmqctl eval`` line),
never as a shell line, and its output comes back through ``GetCommandInvocation``.

A batch goes out as as many commands as SSM's limits need (``eval_document.commands``: 64 KB of document
and parameters, 24,000 characters of output read back, ``COMMAND_SECONDS`` of estimated time), one at a
time, and their answers come back as one output, in the items' order. Each command's wait is derived from
the caller's ``window`` (a RunBatch slice's remaining budget), never beyond ``timeout`` (below the
document's ``timeoutSeconds``). No further command is sent once the caller is ``stopping`` or its window
cannot hold the command's estimated time: its items are answered ``NOT_ATTEMPTED`` (nothing changed; the
mover starts them again in a later slice). A command that fails, or whose answer is cut short, answers
each of its own items with the error; the other commands' answers stand. Only when every command sent
failed is it a ``LeaderTransferError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from queue_balancer.contract import NODE_TAG_KEY
from queue_balancer.errors import LeaderTransferError
from queue_balancer.eval_document import STDOUT_LIMIT, command_seconds, commands, item_names
from queue_balancer.leader_transfer import NOT_ATTEMPTED, answer_line, read_answers

TERMINAL = frozenset({"Success", "Failed", "Cancelled", "TimedOut", "Cancelling"})


@dataclass
class SsmEval:
    """``run_eval`` for ``RaLeaderTransfer``: one Run Command of ``document`` on one tagged, running instance."""

    ssm: Any
    ec2: Any
    tag_key: str
    tag_value: str
    document: str
    running_nodes: Callable[[], Iterable[str]]
    """The node names (``rabbit@host``) the management API reports running."""
    timeout: float = 90.0
    """The longest wait for one command (the document's ``timeoutSeconds`` is 120)."""
    poll: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    window: Callable[[], float] = field(default=lambda: math.inf, repr=False)
    """Seconds the caller may still wait (a slice's remaining budget)."""
    stopping: Callable[[], bool] = field(default=lambda: False, repr=False)
    """Whether the caller was asked to stop (a slice's ``requested``): no further command is sent."""

    def __call__(self, expression: str) -> str:
        chunks = commands(expression)  # refuses anything but the document's operations
        instance = self.instance()
        answers: list[dict[str, Any]] = []
        errors: list[LeaderTransferError] = []
        for number, chunk in enumerate(chunks, 1):
            seconds = command_seconds(chunk)
            if number > 1 and (self.stopping() or self.window() < seconds):
                answers += _answering(chunk, NOT_ATTEMPTED)
                continue
            wait = min(self.timeout, max(self.window(), seconds))
            try:
                answers += self._run(chunk, instance, f"{number}/{len(chunks)}", wait)
            except LeaderTransferError as exc:
                errors.append(exc)
                answers += _answering(chunk, f"{{error,{exc}}}")
        if errors and len(errors) == len(chunks):
            raise errors[0]  # nothing came back: as one command failing
        return answer_line(answers)

    def _run(
        self, chunk: dict[str, list[str]], instance: str, which: str, wait: float
    ) -> list[dict[str, Any]]:
        """Send one command and read its answers, waiting ``wait`` seconds at the most."""
        try:
            sent = self.ssm.send_command(
                InstanceIds=[instance],
                DocumentName=self.document,
                Parameters=chunk,
                TimeoutSeconds=max(30, int(self.timeout)),
                Comment=f"queue-balancer {chunk['operation'][0]} {which}",
            )
        except ClientError as exc:
            raise LeaderTransferError(
                f"SSM refused {self.document} for {instance} (command {which}): {exc}"
            ) from exc
        command_id = sent["Command"]["CommandId"]
        output = self._output(command_id, instance, wait)
        try:
            return read_answers(output)
        except LeaderTransferError as exc:
            cut = len(output) >= STDOUT_LIMIT
            raise LeaderTransferError(
                f"command {command_id} on {instance} ({which}): {exc}"
                + (f" (SSM returns the first {STDOUT_LIMIT} characters of an output)" if cut else "")
            ) from None

    def instance(self) -> str:
        """A tagged EC2 instance that the management API reports as a running node (the first, sorted, so
        retries pick the same one): an instance that is booting, has not joined yet, is paused by
        ``pause_minority`` or is being replaced cannot answer for the cluster."""
        filters = [
            {"Name": f"tag:{self.tag_key}", "Values": [self.tag_value]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
        names: dict[str, set[str]] = {}
        for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    names[instance["InstanceId"]] = _node_names(instance)
        if not names:
            raise LeaderTransferError(
                f"no running instance tagged {self.tag_key}={self.tag_value} to run rabbitmqctl on"
            )
        nodes = sorted(self.running_nodes())
        running = {*nodes, *(node.partition("@")[2] for node in nodes)}
        serving = sorted(i for i, known_as in names.items() if known_as & running)
        if not serving:
            raise LeaderTransferError(
                f"none of the running instances tagged {self.tag_key}={self.tag_value} "
                f"({', '.join(sorted(names))}) is a running node of the cluster ({', '.join(nodes) or 'none'})"
            )
        return serving[0]

    def _output(self, command_id: str, instance: str, wait: float) -> str:
        deadline = self.clock() + wait
        while True:
            try:
                answer = self.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance)
            except ClientError as exc:
                # Right after SendCommand the invocation may not exist yet.
                if exc.response.get("Error", {}).get("Code") != "InvocationDoesNotExist":
                    raise LeaderTransferError(
                        f"cannot read command {command_id} on {instance}: {exc}"
                    ) from exc
                answer = {"Status": "Pending"}
            status = str(answer.get("Status", ""))
            if status in TERMINAL:
                if status != "Success":
                    detail = (answer.get("StandardErrorContent") or answer.get("StatusDetails") or "").strip()
                    raise LeaderTransferError(
                        f"rabbitmqctl eval on {instance} ended {status}: {detail[:300]}"
                    )
                return str(answer.get("StandardOutputContent") or "")
            if self.clock() > deadline:
                raise LeaderTransferError(
                    f"rabbitmqctl eval on {instance} did not finish within {wait:g} s (command {command_id})"
                )
            self.sleep(self.poll)


def _answering(chunk: dict[str, list[str]], result: str) -> list[dict[str, Any]]:
    """The same ``result`` for each item of a command: one not sent, or one that failed."""
    return [
        {"vhost": vhost, "queue": name, "node": node, "attempts": 0, "result": result}
        for vhost, name, node in item_names(chunk)
    ]


def _node_names(instance: dict[str, Any]) -> set[str]:
    """What the management API may call the node on this instance: the node the instance's
    ``NODE_TAG_KEY`` tag names, if any, else the host after ``rabbit@``: its private DNS name (the
    ClusterStack's nodes, ``USE_LONGNAME``), that name's first label, or its private IP address."""
    tagged = [t["Value"] for t in instance.get("Tags", []) if t.get("Key") == NODE_TAG_KEY]
    if tagged:
        return set(tagged)
    dns = str(instance.get("PrivateDnsName") or "")
    return {dns, dns.split(".")[0], str(instance.get("PrivateIpAddress") or "")} - {""}
