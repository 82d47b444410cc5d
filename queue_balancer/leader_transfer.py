"""Exact quorum leader transfer through Ra, for RabbitMQ versions whose HTTP API cannot do it.

RabbitMQ 3.10's management API has no "make node X the leader of quorum queue Q" call (the
``/api/queues/quorum/.../replicas`` endpoints answer 405) and ``rabbitmq-queues rebalance`` only picks
"the member with the fewest leaders". Ra's ``transfer_leadership/2``, which rebalance itself calls, moves a
leader exactly; we reach it with ``rabbitmqctl eval``, transferring a whole batch of queues in one call
because starting the CLI costs most of the 0.3-0.8 s a call takes.

How ``rabbitmqctl eval`` is reached is a deployment concern, hence the ``run_eval`` port: a local
subprocess here, SSM Run Command on AWS.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from queue_balancer.errors import LeaderTransferError
from queue_balancer.model import Move, QueueRef

RESULT_MARKER = "QUEUE-BALANCER-RESULT "

# Each operation is an Erlang fun applied to {Vhost, Name, Target} triples; names travel base64-encoded,
# so no vhost or queue name can break out of the Erlang string syntax.
# Ra (2.14, RabbitMQ 4.0.5) transfers the leadership to a non-voting member when asked, so the target's
# membership is checked first (ra:key_metrics, answered by the target's node; Ra versions without
# membership, RabbitMQ 3.x, have only voters): a non-voter is refused as {error,{not_voter,Membership}}.
TRANSFER_FUN = """
fun({V, N, T}) ->
    Name = base64:decode(N),
    Result = case rabbit_amqqueue:lookup(rabbit_misc:r(base64:decode(V), queue, Name)) of
        {ok, Q} ->
            case amqqueue:get_pid(Q) of
                {RaName, Leader} ->
                    Target = binary_to_atom(base64:decode(T), utf8),
                    case catch ra:key_metrics({RaName, Target}) of
                        #{membership := M} when M =:= non_voter; M =:= promotable -> {error, {not_voter, M}};
                        _ -> catch ra:transfer_leadership({RaName, Leader}, {RaName, Target})
                    end;
                _ -> not_a_quorum_queue
            end;
        Error -> Error
    end,
    #{vhost => base64:decode(V), queue => Name, result => iolist_to_binary(io_lib:format("~p", [Result]))}
end
"""

_CALL = 'F = %(fun)s, io:format("~s~s~n", ["%(marker)s", rabbit_json:encode([F(R) || R <- [%(items)s]])]).'

# What Ra answers when the leader is where we want it (or gets there).
SUCCESS = frozenset({"ok", "already_leader"})
NOT_VOTER = "{error,{not_voter,"
"""The start of the answer for a target that holds no vote (see ``TRANSFER_FUN``)."""
NOT_ATTEMPTED = "not_attempted"
"""The answer for an item whose command was never sent (the caller's slice was stopping or out of time):
nothing changed, so the mover starts it again later."""


@dataclass(frozen=True)
class RaLeaderTransfer:
    """Transfers quorum queue leaders with ``ra:transfer_leadership``, one ``rabbitmqctl eval`` per batch."""

    run_eval: Callable[[str], str]

    def transfer(self, moves: Sequence[Move]) -> dict[QueueRef, str]:
        """Ask Ra to move each leader; Ra's answer per queue: ``ok``, ``already_leader`` or an error."""
        answers = run_batch(self.run_eval, TRANSFER_FUN, [(m.vhost, m.queue, m.target) for m in moves])
        return {QueueRef(a["vhost"], a["queue"]): str(a["result"]) for a in answers}


def run_batch(
    run_eval: Callable[[str], str], fun: str, items: Sequence[tuple[str, str, str]]
) -> list[dict[str, Any]]:
    """Apply an Erlang ``fun`` to every item in one ``rabbitmqctl eval``; its JSON answers, in order."""
    if not items:
        return []
    answers = read_answers(run_eval(expression(fun, items)))
    if len(answers) != len(items):
        raise LeaderTransferError(f"rabbitmqctl eval answered {len(answers)} of {len(items)} items")
    return answers


def read_answers(output: str) -> list[dict[str, Any]]:
    """The answers in an eval's output (its ``RESULT_MARKER`` line); ``LeaderTransferError`` when there is
    none, or it is cut short or not a list of JSON objects: the operations may have run all the same."""
    for line in output.splitlines():
        if line.startswith(RESULT_MARKER):
            try:
                answers = json.loads(line[len(RESULT_MARKER) :])
            except ValueError as exc:
                raise LeaderTransferError(
                    f"rabbitmqctl eval's answer is unreadable ({len(output)} characters, cut short or "
                    f"garbled: {exc}); its operations may have run all the same"
                ) from None
            if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
                raise LeaderTransferError(f"rabbitmqctl eval's answer is not a list of objects: {line[:200]}")
            return answers
    raise LeaderTransferError(f"rabbitmqctl eval gave no result; the node said: {output.strip()[:300]}")


def answer_line(answers: Sequence[dict[str, Any]]) -> str:
    """The output an eval of these answers prints (``read_answers`` reads it back)."""
    return RESULT_MARKER + json.dumps(list(answers), ensure_ascii=False) + "\n"


def expression(fun: str, items: Sequence[tuple[str, str, str]]) -> str:
    """One line of Erlang applying ``fun`` to every item and printing the results as one JSON line."""

    def b64(text: str) -> str:
        return '<<"' + base64.b64encode(text.encode()).decode() + '">>'

    listed = ", ".join(f"{{{b64(a)}, {b64(b)}, {b64(c)}}}" for a, b, c in items)
    one_line = " ".join(line.strip() for line in fun.strip().splitlines())
    return _CALL % {"fun": one_line, "marker": RESULT_MARKER, "items": listed}


@dataclass(frozen=True)
class CommandEval:
    """Runs ``<command> '<expression>'``, e.g. ``rabbitmqctl -n rabbit@node1 eval``."""

    command: Sequence[str]
    timeout: float = 120.0

    @classmethod
    def parse(cls, command_line: str) -> CommandEval:
        return cls(tuple(shlex.split(command_line)))

    def __call__(self, expression_: str) -> str:
        try:
            done = subprocess.run(
                [*self.command, expression_],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LeaderTransferError(f"cannot run {shlex.join(self.command)}: {exc}") from exc
        if done.returncode != 0:
            raise LeaderTransferError(
                f"{shlex.join(self.command)} exited with {done.returncode}: {done.stderr.strip()[:300]}"
            )
        return done.stdout
