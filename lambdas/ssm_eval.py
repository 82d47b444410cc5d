"""``rabbitmqctl eval`` on one cluster node through SSM Run Command: the Lambdas' leader-transfer port.

The Lambdas run in the cluster's VPC but not on a node, and RabbitMQ 3.10's HTTP API cannot move a
quorum leader (see ``queue_balancer.leader_transfer``). So the operation goes to one running instance
carrying the cluster's tag through the balancer's own command document (``queue_balancer.eval_document``:
an operation name and base64 items, validated by SSM; the document builds the ``rabbitmqctl eval`` line),
never as a shell line, and its output comes back through ``GetCommandInvocation``.

A batch goes out as as many commands as SSM's limits need (``eval_document.commands``: 64 KB of document
and parameters, 24,000 characters of output read back), all sent before the first is awaited, and their
answers come back as one output, in the items' order. A command that fails, or whose answer is cut short,
is a ``LeaderTransferError`` naming it: the other commands' operations may have run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from queue_balancer.contract import NODE_TAG_KEY
from queue_balancer.errors import LeaderTransferError
from queue_balancer.eval_document import STDOUT_LIMIT, commands
from queue_balancer.leader_transfer import answer_line, read_answers

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
    poll: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __call__(self, expression: str) -> str:
        chunks = commands(expression)  # refuses anything but the document's operations
        instance = self.instance()
        sent: list[str] = []
        for number, chunk in enumerate(chunks, 1):
            try:
                answer = self.ssm.send_command(
                    InstanceIds=[instance],
                    DocumentName=self.document,
                    Parameters=chunk,
                    TimeoutSeconds=max(30, int(self.timeout)),
                    Comment=f"queue-balancer {chunk['operation'][0]} {number}/{len(chunks)}",
                )
            except ClientError as exc:
                raise LeaderTransferError(
                    f"SSM refused {self.document} for {instance} (command {number} of {len(chunks)}"
                    f"{'; the earlier ones run' if sent else ''}): {exc}"
                ) from exc
            sent.append(answer["Command"]["CommandId"])
        return answer_line([a for command in sent for a in self._answers(command, instance, len(chunks))])

    def _answers(self, command_id: str, instance: str, commands_sent: int) -> list[dict[str, Any]]:
        output = self._output(command_id, instance)
        try:
            return read_answers(output)
        except LeaderTransferError as exc:
            cut = len(output) >= STDOUT_LIMIT
            raise LeaderTransferError(
                f"command {command_id} on {instance} (one of {commands_sent}): {exc}"
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

    def _output(self, command_id: str, instance: str) -> str:
        deadline = self.clock() + self.timeout
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
                    f"rabbitmqctl eval on {instance} did not finish within {self.timeout:g} s (command {command_id})"
                )
            self.sleep(self.poll)


def _node_names(instance: dict[str, Any]) -> set[str]:
    """What the management API may call the node on this instance: the node the instance's
    ``NODE_TAG_KEY`` tag names, if any, else the host after ``rabbit@``: its private DNS name (the
    ClusterStack's nodes, ``USE_LONGNAME``), that name's first label, or its private IP address."""
    tagged = [t["Value"] for t in instance.get("Tags", []) if t.get("Key") == NODE_TAG_KEY]
    if tagged:
        return set(tagged)
    dns = str(instance.get("PrivateDnsName") or "")
    return {dns, dns.split(".")[0], str(instance.get("PrivateIpAddress") or "")} - {""}
