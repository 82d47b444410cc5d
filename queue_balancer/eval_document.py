"""The SSM command document that runs only the balancer's ``rabbitmqctl eval`` operations on a node.

On AWS the ``run_eval`` port (``queue_balancer.leader_transfer``) reaches a node through SSM Run Command.
``AWS-RunShellScript`` would let whoever may invoke the Lambdas' role run any shell line as root on every
broker; this document instead holds the Erlang of its six operations itself (the same funs the core
applies locally: quorum and stream leader transfer, member changes, maintenance mode; the member funs live here so the
stacks may import them) and takes only an operation name (``allowedValues``) and the items as base64
triples (``allowedPattern``: base64 letters, ``,`` and ``;``), which SSM checks before anything runs.
The document builds the ``rabbitmqctl eval`` line; no parameter can reach the shell or Erlang's syntax.

``parameters`` turns an expression the core built (``leader_transfer.expression``) back into those
parameters, so the port keeps its ``run_eval(expression)`` shape; an expression that is not one of the
operations is refused before anything is sent. ``commands`` splits them into as many commands as SSM's
limits need: a document and its parameters together stay under 64 KB, and ``GetCommandInvocation``
returns only the first 24,000 characters of a command's output.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from queue_balancer.errors import LeaderTransferError
from queue_balancer.leader_transfer import RESULT_MARKER, TRANSFER_FUN, expression
from queue_balancer.maintenance import DRAINED_FUN
from queue_balancer.stream_transfer import STREAM_TRANSFER_FUN

# add_member/4 waits up to 30 s (in ms) for Ra to commit the new membership.
ADD_FUN = """
fun({V, N, T}) ->
    R = (catch rabbit_quorum_queue:add_member(base64:decode(V), base64:decode(N),
                                              binary_to_atom(base64:decode(T), utf8), 30000)),
    #{vhost => base64:decode(V), queue => base64:decode(N), node => base64:decode(T),
      result => iolist_to_binary(io_lib:format("~p", [R]))}
end
"""

DELETE_FUN = """
fun({V, N, T}) ->
    R = (catch rabbit_quorum_queue:delete_member(base64:decode(V), base64:decode(N),
                                                 binary_to_atom(base64:decode(T), utf8))),
    #{vhost => base64:decode(V), queue => base64:decode(N), node => base64:decode(T),
      result => iolist_to_binary(io_lib:format("~p", [R]))}
end
"""

# rabbit_quorum_queue:status/2: one proplist per member; integers stay numbers, atoms become text.
STATUS_FUN = """
fun({V, N, _}) ->
    Text = fun(X) when is_integer(X) -> X; (X) -> iolist_to_binary(io_lib:format("~p", [X])) end,
    R = case (catch rabbit_quorum_queue:status(base64:decode(V), base64:decode(N))) of
        L when is_list(L) -> [maps:from_list([{K, Text(X)} || {K, X} <- P]) || P <- L];
        Other -> Text(Other)
    end,
    #{vhost => base64:decode(V), queue => base64:decode(N), node => <<>>, result => R}
end
"""

OPERATIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "transfer_leader": TRANSFER_FUN,
        "add_member": ADD_FUN,
        "delete_member": DELETE_FUN,
        "member_status": STATUS_FUN,
        "drained": DRAINED_FUN,
        "transfer_stream": STREAM_TRANSFER_FUN,
    }
)
"""The Erlang fun of each operation the document runs, by the name its ``operation`` parameter takes."""

_B64 = "[A-Za-z0-9+/=]*"
_TRIPLE = f"{_B64},{_B64},{_B64}"
ITEMS_PATTERN = f"^{_TRIPLE}(;{_TRIPLE})*$"
"""``vhost,name,node;...``, each base64: nothing that could close a shell or Erlang string."""
_ITEM = re.compile(f'\\{{<<"({_B64})">>, <<"({_B64})">>, <<"({_B64})">>\\}}')
_ITEMS_SLOT = "R <- []"

STDOUT_LIMIT = 24_000
"""``GetCommandInvocation`` returns the first 24,000 characters of a command's standard output."""
ITEMS_BYTES_LIMIT = 40_000
"""The ``items`` of one command at the most: SSM refuses a document plus its parameters over 64 KB (the
document is about 2.6 KB); the rest is margin."""
ANSWER_CHARS_LIMIT = 20_000
"""One command's answers at the most, as estimated before sending: under ``STDOUT_LIMIT`` with margin."""
ITEMS_PER_COMMAND = 100
ANSWER_CHARS: Final[Mapping[str, int]] = {
    # one item's answer beyond its names (repeated as UTF-8 text, never more characters than bytes): its
    # keys and Ra's answer as text
    # (``ok``, ``already_leader``, a short error term; a crash report is longer, and is then cut short)
    "transfer_leader": 100,
    "add_member": 100,
    "delete_member": 100,
    "member_status": 7 * 300,  # a proplist of about 250 characters per member, up to 7 members
    "drained": 60,
    "transfer_stream": 220,  # restarts, offsets before/after and the last answer, ``{migrated,'rabbit@...'}``
}
COMMAND_SECONDS = 75.0
"""One command's estimated worst case at the most (see ``ITEM_SECONDS``): under ``SsmEval``'s wait (90 s
at the most) and the document's ``timeoutSeconds`` (120), so a command is answered before either gives up."""
ITEM_SECONDS: Final[Mapping[str, float]] = {
    # one item's time inside the eval, near its worst case: the items of a command run one after another
    "transfer_leader": 0.5,  # one Raft election; Ra answers before it ends
    "add_member": 3.0,  # a membership commit (add_member/4 gives up after 30 s: then the command is late)
    "delete_member": 1.0,
    "member_status": 0.3,
    "drained": 0.1,
    "transfer_stream": 7.5,  # up to STREAM_ATTEMPTS (3) restarts of 0.5-2.5 s each (README "Streams"): 10 a command
}


def document_name(cluster_name: str) -> str:
    """One document per cluster (SSM names are per account and region; ``AWS``/``Amazon`` prefixes are reserved)."""
    return f"QueueBalancer-{cluster_name}-RabbitmqctlEval"


def _one_line(fun: str) -> str:
    return " ".join(line.strip() for line in fun.strip().splitlines())


def eval_expression(operation: str, items: str) -> str:
    """The Erlang the document evaluates: the operation's fun over the parsed items, one JSON line out."""
    funs = ", ".join(f'<<"{name}">> => {_one_line(fun)}' for name, fun in OPERATIONS.items())
    return (
        f'Funs = #{{{funs}}}, F = maps:get(<<"{operation}">>, Funs), '
        'Items = [list_to_tuple(binary:split(I, <<",">>, [global])) '
        f'|| I <- binary:split(<<"{items}">>, <<";">>, [global])], '
        f'io:format("~s~s~n", ["{RESULT_MARKER}", rabbit_json:encode([F(R) || R <- Items])]).'
    )


def content() -> dict[str, Any]:
    """The document (schemaVersion 2.2): one ``rabbitmqctl eval`` line, as root (where the cookie is)."""
    line = f"rabbitmqctl eval '{eval_expression('{{ operation }}', '{{ items }}')}'"
    if line.count("'") != 2:
        raise AssertionError("an operation's Erlang contains a single quote; it would end the shell word")
    return {
        "schemaVersion": "2.2",
        "description": "queue-balancer: quorum leaders, members and maintenance mode through rabbitmqctl eval",
        "parameters": {
            "operation": {"type": "String", "allowedValues": list(OPERATIONS)},
            "items": {
                "type": "String",
                "description": "vhost,queue,node triples separated by ';', each base64",
                "allowedPattern": ITEMS_PATTERN,
            },
        },
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "rabbitmqctlEval",
                "inputs": {"runCommand": [line], "timeoutSeconds": "120"},
            }
        ],
    }


def parameters(expression_: str) -> dict[str, list[str]]:
    """The document's parameters for an expression built by ``leader_transfer.expression``."""
    for operation, fun in OPERATIONS.items():
        head, tail = expression(fun, []).split(_ITEMS_SLOT)
        head += _ITEMS_SLOT[:-1]
        tail = _ITEMS_SLOT[-1] + tail
        if expression_.startswith(head) and expression_.endswith(tail):
            listed = expression_[len(head) : len(expression_) - len(tail)]
            triples = _ITEM.findall(listed)
            if triples and ", ".join(_triple(t) for t in triples) == listed:
                return {"operation": [operation], "items": [";".join(",".join(t) for t in triples)]}
            break
    raise LeaderTransferError(
        "the SSM document runs only the balancer's leader-transfer, member and maintenance operations; "
        f"refusing another expression: {expression_[:80]!r}"
    )


def commands(expression_: str) -> list[dict[str, list[str]]]:
    """``parameters`` for ``expression_``, split into commands that each fit SSM's limits: at most
    ``ITEMS_PER_COMMAND`` items, ``ITEMS_BYTES_LIMIT`` bytes of items, ``ANSWER_CHARS_LIMIT``
    characters of estimated answers (see ``ANSWER_CHARS``) and ``COMMAND_SECONDS`` of estimated time (see
    ``ITEM_SECONDS``), in the items' order."""
    whole = parameters(expression_)
    operation = whole["operation"][0]
    chunks: list[list[str]] = [[]]
    size = answers = 0
    for item in whole["items"][0].split(";"):
        answer = ANSWER_CHARS[operation] + _decoded_bytes(item)
        full = (
            len(chunks[-1]) >= ITEMS_PER_COMMAND
            or size + len(item) + 1 > ITEMS_BYTES_LIMIT
            or answers + answer > ANSWER_CHARS_LIMIT
            or len(chunks[-1]) * ITEM_SECONDS[operation] + ITEM_SECONDS[operation] > COMMAND_SECONDS
        )
        if chunks[-1] and full:
            chunks.append([])
            size = answers = 0
        chunks[-1].append(item)
        size += len(item) + 1
        answers += answer
    return [{"operation": [operation], "items": [";".join(chunk)]} for chunk in chunks]


def command_seconds(command: Mapping[str, list[str]]) -> float:
    """A command's estimated worst case (``ITEM_SECONDS`` per item)."""
    return ITEM_SECONDS[command["operation"][0]] * len(command["items"][0].split(";"))


def item_names(command: Mapping[str, list[str]]) -> list[tuple[str, str, str]]:
    """The ``(vhost, queue, node)`` of each item of a command, decoded: what its answers name."""
    names = [
        [base64.b64decode(part).decode() for part in item.split(",")]
        for item in command["items"][0].split(";")
    ]
    return [(vhost, name, node) for vhost, name, node in names]


def _decoded_bytes(item: str) -> int:
    """The bytes of an item's names once decoded (what its answer repeats): 3 for every 4 of base64."""
    return sum(len(part) * 3 // 4 for part in item.split(","))


def _triple(parts: tuple[str, ...]) -> str:
    return "{" + ", ".join(f'<<"{p}">>' for p in parts) + "}"
