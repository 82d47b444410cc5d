"""``rabbitmqctl eval`` on one cluster node through SSM Run Command: the Lambdas' leader-transfer port.

The Lambdas run in the cluster's VPC but not on a node, and RabbitMQ 3.10's HTTP API cannot move a
quorum leader (see ``queue_balancer.leader_transfer``). So the expression goes to one running instance
carrying the cluster's tag as an ``AWS-RunShellScript`` command, and its output comes back through
``GetCommandInvocation``. The expression is shell-quoted as one word; the names inside it are already
base64, so nothing an operator named a queue can reach the shell.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from queue_balancer.errors import LeaderTransferError

TERMINAL = frozenset({"Success", "Failed", "Cancelled", "TimedOut", "Cancelling"})


def shell_command(expression: str) -> str:
    """The one line the instance runs (as root, where ``rabbitmqctl`` finds the node's cookie)."""
    return "rabbitmqctl eval " + shlex.quote(expression)


@dataclass
class SsmEval:
    """``run_eval`` for ``RaLeaderTransfer``: one Run Command on one tagged, running instance."""

    ssm: Any
    ec2: Any
    tag_key: str
    tag_value: str
    timeout: float = 90.0
    poll: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __call__(self, expression: str) -> str:
        instance = self.instance()
        try:
            sent = self.ssm.send_command(
                InstanceIds=[instance],
                DocumentName="AWS-RunShellScript",
                Parameters={"commands": [shell_command(expression)]},
                TimeoutSeconds=max(30, int(self.timeout)),
                Comment="queue-balancer quorum leader transfer",
            )
        except ClientError as exc:
            raise LeaderTransferError(f"SSM refused the command for {instance}: {exc}") from exc
        return self._output(sent["Command"]["CommandId"], instance)

    def instance(self) -> str:
        """The first running instance with the cluster's tag (sorted, so retries pick the same one)."""
        filters = [
            {"Name": f"tag:{self.tag_key}", "Values": [self.tag_value]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
        ids: list[str] = []
        for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
            ids += [i["InstanceId"] for r in page.get("Reservations", []) for i in r.get("Instances", [])]
        if not ids:
            raise LeaderTransferError(
                f"no running instance tagged {self.tag_key}={self.tag_value} to run rabbitmqctl on"
            )
        return sorted(ids)[0]

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
