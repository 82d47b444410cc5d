"""Best-effort stream leader moves through ``rabbit_stream_queue:transfer_leadership/2`` (RabbitMQ 3.12+).

RabbitMQ's only primitive asks the stream coordinator to restart the stream with a *preferred* leader: every
member is stopped, and the coordinator elects the new writer as soon as a quorum of members has reported its
stop, among those with the highest tail (``rabbit_stream_coordinator``, 4.0.5: ``update_stream0`` on
``member_stopped``, ``select_leader/2``). The preferred node wins only if it is among that first majority,
so a call may leave the writer elsewhere;
each call restarts the writer (its clients pause). The coordinator's own Ra leadership is left alone: a new
coordinator leader fails the in-flight actions of every stream of the cluster (``state_enter(leader, _)``
emits ``fail_active_actions``), too high a price for a better landing rate.
A bounded number of attempts per stream runs inside one ``rabbitmqctl eval`` per batch (the same port as the
quorum transfers), and the answer says how many restarts were made; the mover then observes the result. The eval
starts no restart after ``EVAL_BUDGET_SECONDS``.

The fun checks that the running RabbitMQ exports ``transfer_leadership/2`` (3.10 and 3.11 do not) and answers
``{error,no_stream_transfer_leadership}`` without touching the stream when it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from queue_balancer.leader_transfer import run_batch
from queue_balancer.model import Move, QueueRef

STREAM_ATTEMPTS = 3
"""Restarts asked per stream and run at most: each restarts the writer (its clients pause). A stream that
landed is never restarted again; one the coordinator left elsewhere is not planned again in the same run."""

EVAL_BUDGET_SECONDS = 40
"""No restart starts later than this after the eval began: a restart may then still wait up to the
coordinator's 30 s command timeout (``?CMD_TIMEOUT``), which ends before the port gives up (SSM 90 s, CLI
120 s), so nothing goes on restarting streams after the caller stopped waiting."""

NOT_SUPPORTED = "{error,no_stream_transfer_leadership}"
BUDGET_SPENT = "{error,eval_budget_spent}"
"""The answer of a stream whose turn came after ``EVAL_BUDGET_SECONDS``: it was not restarted."""

# The writer's committed offset is read before the first restart and the new writer's log tail after the
# last (rabbit_stream_queue:status/2, polled up to 2 s while the new writer recovers its log, during which it
# reports -1, read as not known: the count is then compared instead): a restart elects
# among the members with the highest tail, so a tail below what was committed is a loss; retention
# trims the head of the log, never its tail, so (unlike the message count) it cannot fail a healthy move.
# rabbit_stream_queue:transfer_leadership/2 answers {migrated, Node} (3.12-4.2) or {ok, Node} (4.3+), and
# {not_migrated, Reason} or {error, Reason}: a landing ends the stream's attempts, a miss tries again, an error
# ends them (a timeout may have restarted it: the mover observes where it is).
STREAM_TRANSFER_FUN = (
    """
begin
Deadline = erlang:monotonic_time(millisecond) + BUDGET_MS,
fun({V, N, T}) ->
    Name = base64:decode(N),
    Target = binary_to_atom(base64:decode(T), utf8),
    QName = rabbit_misc:r(base64:decode(V), queue, Name),
    Try = fun Try(K, Last) when K > MAX_ATTEMPTS -> {K - 1, Last};
              Try(K, Last) ->
                  Late = erlang:monotonic_time(millisecond) > Deadline,
                  case rabbit_amqqueue:lookup(QName) of
                      {ok, _} when Late, K =:= 1 -> {0, {error, eval_budget_spent}};
                      {ok, _} when Late -> {K - 1, Last};
                      {ok, Q} ->
                          case catch rabbit_stream_queue:transfer_leadership(Q, Target) of
                              {migrated, Target} = R -> {K, R};
                              {ok, Target} = R -> {K, R};
                              {migrated, Node} = R when is_atom(Node) -> Try(K + 1, R);
                              {ok, Node} = R when is_atom(Node) -> Try(K + 1, R);
                              R -> {K, R}
                          end;
                      Error -> {K - 1, Error}
                  end
          end,
    Writer = fun(Key) ->
        case catch rabbit_stream_queue:status(base64:decode(V), Name) of
            L when is_list(L) ->
                case [O || M <- L, is_list(M), lists:member({role, writer}, M), {K, O} <- M, K =:= Key,
                           is_integer(O)] of
                    [O | _] -> O;
                    [] -> unknown
                end;
            _ -> unknown
        end
    end,
    Exported = code:ensure_loaded(rabbit_stream_queue) =:= {module, rabbit_stream_queue}
        andalso erlang:function_exported(rabbit_stream_queue, transfer_leadership, 2),
    Committed = case Exported of true -> Writer(committed_offset); false -> unknown end,
    Tail = fun Tail(0) -> Writer(offset);
               Tail(Polls) ->
                   case Writer(offset) of
                       O when is_integer(O), is_integer(Committed), O >= Committed -> O;
                       _ -> timer:sleep(200), Tail(Polls - 1)
                   end
           end,
    {Attempts, Result} = case Exported of
        true -> Try(1, none);
        false -> {0, {error, no_stream_transfer_leadership}}
    end,
    TailAfter = case Attempts of 0 -> unknown; _ -> Tail(TAIL_POLLS) end,
    #{vhost => base64:decode(V), queue => Name, attempts => Attempts,
      committed_before => Committed, tail_after => TailAfter,
      result => iolist_to_binary(io_lib:format("~p", [Result]))}
end
end
""".replace("MAX_ATTEMPTS", str(STREAM_ATTEMPTS))
    .replace("BUDGET_MS", str(EVAL_BUDGET_SECONDS * 1000))
    .replace("TAIL_POLLS", "10")
)


@dataclass(frozen=True)
class StreamAnswer:
    """What the node answered for one stream: restarts made and the last answer (``{migrated,Node}``...)."""

    attempts: int
    result: str
    committed_before: int | None = None
    """The writer's committed offset before the first restart (None: not read)."""
    tail_after: int | None = None
    """The new writer's last offset after the last restart (None: not read)."""

    @property
    def lost(self) -> bool:
        """The new writer's log ends before what was committed: committed messages are gone."""
        if self.committed_before is None or self.tail_after is None:
            return False
        return self.tail_after < self.committed_before

    @property
    def chosen(self) -> str | None:
        """The node the coordinator made leader by the last restart, if it answered one (``{migrated,N}``
        up to 4.2, ``{ok,N}`` from 4.3)."""
        for prefix in ("{migrated,", "{ok,"):
            if self.result.startswith(prefix) and self.result.endswith("}"):
                return self.result[len(prefix) : -1].strip("'")
        return None


@dataclass(frozen=True)
class StreamLeaderTransfer:
    """Restarts streams with a preferred leader, up to ``STREAM_ATTEMPTS`` times each, one eval per batch."""

    run_eval: Callable[[str], str]

    def transfer_streams(self, moves: Sequence[Move]) -> dict[QueueRef, StreamAnswer]:
        answers = run_batch(self.run_eval, STREAM_TRANSFER_FUN, [(m.vhost, m.queue, m.target) for m in moves])
        return {
            QueueRef(a["vhost"], a["queue"]): StreamAnswer(
                int(a["attempts"]),
                str(a["result"]),
                _offset(a.get("committed_before")),
                _offset(a.get("tail_after")),
            )
            for a in answers
        }


def _offset(value: object) -> int | None:
    """An offset of the answer; ``unknown`` (not read) or -1 (a writer still recovering its log) is None."""
    return value if isinstance(value, int) and value >= 0 else None
