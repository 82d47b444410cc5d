"""Best-effort stream leader moves through ``rabbit_stream_queue:transfer_leadership/2`` (RabbitMQ 3.12+).

RabbitMQ's only primitive asks the stream coordinator to restart the stream with a *preferred* leader: every
member is stopped, and the coordinator elects the new writer as soon as a quorum of members has reported its
stop, among those with the highest tail (``rabbit_stream_coordinator``, 4.0.5: ``update_stream0`` on
``member_stopped``, ``select_leader/2``). The preferred node wins only if it is among that first majority,
so a call may leave the writer elsewhere; each call restarts the writer (its clients pause). The coordinator
issues the members' stops from its own Ra leader, whose local stop answers first: moving the coordinator's
leadership to the target before each attempt raised the landings on 4.0.5 (see the README, "Streams").
A bounded number of attempts per stream runs inside one ``rabbitmqctl eval`` per batch (the same port as the
quorum transfers), and the answer says how many restarts were made; the mover then observes the result.

The fun checks that the running RabbitMQ exports ``transfer_leadership/2`` (3.10 and 3.11 do not) and answers
``{error,no_stream_transfer_leadership}`` without touching the stream when it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from queue_balancer.leader_transfer import run_batch
from queue_balancer.model import Move, QueueRef

STREAM_ATTEMPTS = 3
"""Restarts asked per stream and run: each restarts the writer (its clients pause), and on 4.0.5 three
attempts landed 10 of 10 idle streams (with the coordinator on the target); a stream that missed three times
is left to the next round, which plans with it where it is."""

NOT_SUPPORTED = "{error,no_stream_transfer_leadership}"

STREAM_TRANSFER_FUN = """
fun({V, N, T}) ->
    Name = base64:decode(N),
    Target = binary_to_atom(base64:decode(T), utf8),
    QName = rabbit_misc:r(base64:decode(V), queue, Name),
    C = rabbit_stream_coordinator,
    Try = fun Try(K, Last) when K > MAX_ATTEMPTS -> {K - 1, Last};
              Try(K, _) ->
                  case rabbit_amqqueue:lookup(QName) of
                      {ok, Q} ->
                          _ = case catch ra_leaderboard:lookup_leader(C) of
                              {C, L} when L =/= Target -> catch ra:transfer_leadership({C, L}, {C, Target});
                              _ -> ok
                          end,
                          case catch rabbit_stream_queue:transfer_leadership(Q, Target) of
                              {migrated, Target} = R -> {K, R};
                              R -> Try(K + 1, R)
                          end;
                      Error -> {K - 1, Error}
                  end
          end,
    Exported = code:ensure_loaded(rabbit_stream_queue) =:= {module, rabbit_stream_queue}
        andalso erlang:function_exported(rabbit_stream_queue, transfer_leadership, 2),
    {Attempts, Result} = case Exported of
        true -> Try(1, none);
        false -> {0, {error, no_stream_transfer_leadership}}
    end,
    #{vhost => base64:decode(V), queue => Name, attempts => Attempts,
      result => iolist_to_binary(io_lib:format("~p", [Result]))}
end
""".replace("MAX_ATTEMPTS", str(STREAM_ATTEMPTS))


@dataclass(frozen=True)
class StreamAnswer:
    """What the node answered for one stream: restarts made and the last answer (``{migrated,Node}``...)."""

    attempts: int
    result: str

    @property
    def chosen(self) -> str | None:
        """The node the coordinator made leader by the last restart, if it answered one."""
        prefix = "{migrated,"
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
            QueueRef(a["vhost"], a["queue"]): StreamAnswer(int(a["attempts"]), str(a["result"]))
            for a in answers
        }
