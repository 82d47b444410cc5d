"""Exact, current message counts through AMQP, for verifying that a move kept every message.

The management API's counts come from the statistics database, refreshed every few seconds (5 s by
default) and briefly wrong right after a leader change (zero, or doubled); waiting for them to settle
would dominate a move's duration. A passive ``queue.declare`` is answered by the queue's leader process
itself, in a millisecond, with the number of ready messages and consumers. With no consumer attached
(the low-traffic window a rebalance should run in) ready messages are all the messages; with consumers
the count may legitimately change and the mover says so instead of failing the move.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions

from queue_balancer.errors import BalancerError
from queue_balancer.model import QueueCount, QueueRef


class CountUnavailable(BalancerError):
    """AMQP could not answer (unreachable, refused): the mover falls back to the statistics view."""


class CountTimeout(CountUnavailable):
    """AMQP did not answer in time (a queue whose leader is gone never answers a declare)."""


DEFAULT_AMQP_PORT = 5672
WILDCARD_OR_LOOPBACK = frozenset({"::", "0.0.0.0", "127.0.0.1", "::1", "localhost"})


def amqp_endpoint(management_url: str, port: int = DEFAULT_AMQP_PORT) -> tuple[str, int]:
    """Where AMQP listens when only the management URL is known: same host, the AMQP port."""
    host = urlsplit(management_url).hostname
    if not host:
        raise CountUnavailable(f"no host in management URL {management_url!r}")
    return host, port


def amqp_listeners(overview: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """Each node's plain AMQP listener (address, port), from ``GET /api/overview``'s ``listeners``."""
    found: dict[str, tuple[str, int]] = {}
    for listener in overview.get("listeners") or ():
        if listener.get("protocol") == "amqp" and listener.get("port"):
            found.setdefault(
                str(listener.get("node")), (str(listener.get("ip_address") or ""), int(listener["port"]))
            )
    return found


def discover_amqp(
    management_url: str, overview: Mapping[str, Any], port: int | None = None
) -> tuple[str, int]:
    """Where to count messages, with no configuration: the AMQP listener of the node that answers the
    management API (``overview['node']``), reached at the management URL's host when it listens on every
    interface or on loopback, else at its own address. ``port`` (a flag or setting) overrides the port."""
    host, _ = amqp_endpoint(management_url)
    if port is not None:
        return host, port
    listeners = amqp_listeners(overview)
    address, found = listeners.get(
        str(overview.get("node")), next(iter(listeners.values()), ("", DEFAULT_AMQP_PORT))
    )
    return (host if not address or address in WILDCARD_OR_LOOPBACK else address), found


@dataclass
class AmqpCounter:
    """Counts queues over one AMQP connection per vhost (an AMQP connection is bound to a vhost)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    timeout: float = 10.0
    """The deadline of every AMQP call: connecting, and each passive declare (a headless queue never
    answers one, and pika's blocking channel would wait for ever)."""
    fallbacks: tuple[tuple[str, int], ...] = ()
    """Other nodes' AMQP endpoints, tried in order when this one cannot be reached."""
    on_unreachable: Callable[[str], None] = field(default=lambda _: None, repr=False)
    """Told once, the first time AMQP cannot be reached (counts then come from the statistics view)."""
    _connections: dict[str, Any] = field(default_factory=dict, repr=False)
    _channels: dict[str, Any] = field(default_factory=dict, repr=False)
    _warned: bool = field(default=False, repr=False)

    def message_counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, QueueCount | None]:
        """Ready messages and consumers per queue; None for a queue that does not exist."""
        result: dict[QueueRef, QueueCount | None] = {}
        for ref in refs:
            try:
                ok = self._declare_passive(ref)
                result[ref] = QueueCount(ok.method.message_count, ok.method.consumer_count)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._channels.pop(ref.vhost, None)
                if exc.reply_code != 404:
                    raise CountUnavailable(f"AMQP refused to count {ref}: {exc.reply_text}") from exc
                result[ref] = None
            except pika.exceptions.AMQPError as exc:
                self._drop(ref.vhost)
                raise CountUnavailable(f"AMQP at {self.host}:{self.port} failed for {ref}: {exc!r}") from exc
        return result

    def _declare_passive(self, ref: QueueRef) -> Any:
        """A passive declare with a deadline: a timer on the connection raises inside pika's wait."""
        channel = self._channel(ref.vhost)
        connection = self._connections[ref.vhost]

        def expire() -> None:
            raise CountTimeout(
                f"AMQP at {self.host}:{self.port} did not answer for {ref} in {self.timeout:g} s"
            )

        timer = connection.call_later(self.timeout, expire)
        try:
            return channel.queue_declare(ref.name, passive=True)
        except CountTimeout:
            self._drop(ref.vhost)
            raise
        finally:
            if connection.is_open:
                connection.remove_timeout(timer)

    def _channel(self, vhost: str) -> Any:
        channel = self._channels.get(vhost)
        if channel is not None and channel.is_open:
            return channel
        connection = self._connections.get(vhost)
        if connection is None or not connection.is_open:
            connection = self._connect(vhost)
            self._connections[vhost] = connection
        channel = connection.channel()
        self._channels[vhost] = channel
        return channel

    def _connect(self, vhost: str) -> Any:
        """A connection to the first endpoint that answers: this one, then ``fallbacks`` (a node gone)."""
        failures = []
        for host, port in ((self.host, self.port), *self.fallbacks):
            params = pika.ConnectionParameters(
                host,
                port,
                vhost,
                pika.PlainCredentials(self.user, self.password),
                socket_timeout=self.timeout,
                stack_timeout=self.timeout,
                blocked_connection_timeout=self.timeout,
                connection_attempts=1,
            )
            try:
                connection = pika.BlockingConnection(params)
            except pika.exceptions.AMQPError as exc:
                failures.append(f"{host}:{port}: {exc!r}")
                continue
            self.host, self.port = host, port
            return connection
        problem = f"cannot open AMQP for vhost '{vhost}': {'; '.join(failures)}"
        if not self._warned:
            self._warned = True
            self.on_unreachable(
                f"{problem}; exact message counts are off and every move waits for the statistics "
                "view instead (~5 s slower): check the port with --amqp-port"
            )
        raise CountUnavailable(problem)

    def _drop(self, vhost: str) -> None:
        self._channels.pop(vhost, None)
        connection = self._connections.pop(vhost, None)
        if connection is not None and connection.is_open:
            connection.close()

    def close(self) -> None:
        for vhost in list(self._connections):
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._drop(vhost)
