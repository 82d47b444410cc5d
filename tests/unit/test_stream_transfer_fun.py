"""The stream transfer fun itself, run by a real Erlang VM against stub RabbitMQ modules that answer a
scripted sequence: both answer shapes (``{migrated,N}`` up to 4.2, ``{ok,N}`` from 4.3), a landing ends the
attempts, an error ends them, no restart starts past the eval's budget, the offsets are read (ops-3 #3, #6,
#8). One Erlang VM start a case (1-5 s on a loaded machine).
The real nodes' tests (``test_rabbitmq4``) run it against RabbitMQ itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from queue_balancer.leader_transfer import run_batch
from queue_balancer.stream_transfer import EVAL_BUDGET_SECONDS, STREAM_TRANSFER_FUN, StreamAnswer

pytestmark = pytest.mark.skipif(shutil.which("erlc") is None, reason="needs Erlang (erlc), as RabbitMQ does")

STUBS = """
-module(rabbit_stream_queue).
-export([transfer_leadership/2, restarts/0, status/2]).
transfer_leadership(_Q, _Target) ->
    [Answer | Rest] = case get(answers) of undefined -> scripted(); Left -> Left end,
    put(answers, Rest),
    put(restarts, restarts() + 1),
    Answer.
restarts() -> case get(restarts) of undefined -> 0; N -> N end.
status(_, _) ->
    case restarts() of
        0 -> [[{role, replica}, {committed_offset, 3}], [{role, writer}, {offset, 12}, {committed_offset, 9}]];
        _ -> [[{role, writer}, {offset, list_to_integer(os:getenv("QB_TAIL"))}]]
    end.
scripted() ->
    {ok, Tokens, _} = erl_scan:string(os:getenv("QB_ANSWERS") ++ "."),
    {ok, Term} = erl_parse:parse_term(Tokens),
    Term.
"""

OTHERS = {
    "rabbit_misc": "-module(rabbit_misc).\n-export([r/3]).\nr(V, queue, N) -> {V, N}.\n",
    "rabbit_amqqueue": "-module(rabbit_amqqueue).\n-export([lookup/1]).\nlookup(Q) -> {ok, Q}.\n",
    "rabbit_json": """-module(rabbit_json).
-export([encode/1]).
encode(L) -> iolist_to_binary(["[", lists:join(",", [obj(M) || M <- L]), "]"]).
obj(M) -> ["{", lists:join(",", [["\\"", atom_to_list(K), "\\":", val(V)] || {K, V} <- maps:to_list(M)]), "}"].
val(V) when is_integer(V) -> integer_to_list(V);
val(V) when is_atom(V) -> io_lib:format("~p", [atom_to_list(V)]);
val(V) -> io_lib:format("~p", [binary_to_list(V)]).
""",
}


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stub modules, compiled once."""
    where = tmp_path_factory.mktemp("stubs")
    for name, text in {"rabbit_stream_queue": STUBS, **OTHERS}.items():
        (where / f"{name}.erl").write_text(text)
    subprocess.run(["erlc", "-o", str(where), *sorted(where.glob("*.erl"))], check=True, timeout=60)
    return where


def transfer(stubs: Path, answers: str, fun: str = STREAM_TRANSFER_FUN, tail: int = 12) -> StreamAnswer:
    """One stream asked to go to rabbit@b, the stubs answering ``answers`` (an Erlang list) in turn."""

    def run_eval(expression: str) -> str:
        done = subprocess.run(
            [
                "erl",
                "-noshell",
                "-pa",
                str(stubs),
                "-eval",
                expression.rstrip().removesuffix(".") + ", halt().",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "QB_ANSWERS": answers, "QB_TAIL": str(tail)},
        )
        return done.stdout

    (answer,) = run_batch(run_eval, fun, [("/", "s", "rabbit@b")])
    assert answer["committed_before"] == 9
    tail_after = answer["tail_after"]
    assert isinstance(tail_after, int) or tail_after == "unknown"
    return StreamAnswer(
        int(answer["attempts"]), str(answer["result"]), 9, tail_after if isinstance(tail_after, int) else None
    )


@pytest.mark.parametrize("shape", ["migrated", "ok"])
def test_a_landing_in_either_shape_ends_the_attempts(stubs: Path, shape: str) -> None:
    """4.3 answers {ok, Node}: it used to restart a stream that had landed twice more."""
    answer = transfer(stubs, f"[{{{shape}, 'rabbit@c'}}, {{{shape}, 'rabbit@b'}}, {{{shape}, 'rabbit@b'}}]")
    assert (answer.attempts, answer.chosen) == (2, "rabbit@b")


def test_misses_stop_after_the_attempts_and_an_error_at_once(stubs: Path) -> None:
    missed = transfer(stubs, "[{ok, 'rabbit@c'}, {ok, 'rabbit@c'}, {ok, 'rabbit@c'}, {ok, 'rabbit@b'}]")
    assert (missed.attempts, missed.chosen) == (3, "rabbit@c")
    failed = transfer(stubs, "[{error, timeout}, {ok, 'rabbit@b'}]")
    assert (failed.attempts, failed.result, failed.chosen) == (1, "{error,timeout}", None)


def test_no_restart_starts_past_the_budget(stubs: Path) -> None:
    spent = STREAM_TRANSFER_FUN.replace(f"+ {EVAL_BUDGET_SECONDS * 1000},", "+ -1,")
    assert spent != STREAM_TRANSFER_FUN
    answer = transfer(stubs, "[{ok, 'rabbit@b'}]", spent)
    assert (answer.attempts, answer.result, answer.tail_after) == (0, "{error,eval_budget_spent}", None)


def test_the_new_writers_tail_is_read_after_the_restart(stubs: Path) -> None:
    """ops-3 #8: the offsets, not the count, tell a loss (a tail below the committed offset)."""
    assert not transfer(stubs, "[{ok, 'rabbit@b'}]", tail=12).lost
    assert transfer(stubs, "[{ok, 'rabbit@b'}]", tail=5).lost
