"""Declaring the seeded queues and publishing persistent messages with publisher confirms, over AMQP.

Declares go to the seeding node so client-local locators put every leader there; publishing keeps a window
of unconfirmed messages, so every message is acknowledged by the broker after it is persisted and
replicated, at a fraction of the time of one confirm per message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import pika

from queue_balancer.local.seed_target import SeedEndpoint, SeedError

# Unconfirmed messages in flight per connection: enough to keep the queue processes busy (fsync batches)
# without letting a blocked broker pile up an unbounded backlog in the client.
CONFIRM_WINDOW = 1000


def _connection_parameters(endpoint: SeedEndpoint, vhost: str) -> Any:
    return pika.ConnectionParameters(
        host=endpoint.amqp_host,
        port=endpoint.amqp_port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(endpoint.user, endpoint.password),
        blocked_connection_timeout=60,  # a memory/disk alarm must fail the seed, not hang it
        connection_attempts=3,
        retry_delay=1,
    )


def declare_queues(
    endpoint: SeedEndpoint, vhost: str, queues: Mapping[str, Literal["classic", "quorum"]]
) -> None:
    """Declare over AMQP on the seeding node, so client-local locators put every leader there."""
    classic_args = {"x-queue-master-locator": "client-local"}
    quorum_args = {"x-queue-type": "quorum", "x-queue-leader-locator": "client-local"}
    try:
        connection = pika.BlockingConnection(_connection_parameters(endpoint, vhost))
    except pika.exceptions.AMQPError as exc:
        raise SeedError(
            f"cannot open an AMQP connection to {endpoint.leader_node} at "
            f"{endpoint.amqp_host}:{endpoint.amqp_port} (vhost {vhost!r}): {exc!r}"
        ) from exc
    try:
        channel = connection.channel()
        for name, kind in queues.items():
            try:
                channel.queue_declare(
                    name, durable=True, arguments=quorum_args if kind == "quorum" else classic_args
                )
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise SeedError(
                    f"cannot declare queue {name!r} in vhost {vhost!r}: {exc.reply_text}"
                ) from exc
    except pika.exceptions.AMQPError as exc:
        raise SeedError(
            f"the AMQP connection to {endpoint.leader_node} failed while declaring queues: {exc!r}"
        ) from exc
    finally:
        if connection.is_open:
            connection.close()


def publish_confirmed(
    endpoint: SeedEndpoint, vhost: str, names: Sequence[str], per_queue: int, size: int, deadline: float
) -> int:
    """Publish ``per_queue`` persistent messages to each queue; return how many the broker confirmed."""
    publisher = _ConfirmingPublisher(
        _connection_parameters(endpoint, vhost),
        _round_robin(names, per_queue),
        total=len(names) * per_queue,
        size=size,
        timeout=max(1.0, deadline - time.monotonic()),
    )
    confirmed = publisher.run()
    if publisher.error:
        raise SeedError(
            f"publishing to {endpoint.leader_node} ({endpoint.amqp_host}:{endpoint.amqp_port}, vhost {vhost!r}) "
            f"failed after {confirmed} confirmed message(s): {publisher.error}"
        )
    return confirmed


def _round_robin(names: Sequence[str], per_queue: int) -> Iterator[str]:
    # Interleaving queues keeps every queue process (and its mirrors' fsyncs) busy at once.
    for _ in range(per_queue):
        yield from names


class _ConfirmingPublisher:
    """Publishes with a window of unconfirmed messages on pika's asynchronous connection.

    BlockingConnection waits for each confirm (about 1 ms per message to a mirrored queue here); a window
    of outstanding confirms is the same safety (every message acknowledged by the broker after it is
    persisted and replicated) at a fraction of the time.
    """

    def __init__(
        self, parameters: Any, routing_keys: Iterator[str], *, total: int, size: int, timeout: float
    ):
        self._parameters = parameters
        self._keys = routing_keys
        self._total = total
        self._timeout = timeout
        self._outstanding: dict[int, str] = {}
        self._next_tag = 1
        self._exhausted = False
        self._connection: Any = None
        self._channel: Any = None
        self._properties = pika.BasicProperties(delivery_mode=2, content_type="text/plain")
        self._body = (b"queue-balancer seed " * (size // 20 + 1))[:size]
        self.confirmed = 0
        self.error: str | None = None
        self._finished = False  # set before our own close, so the close callbacks are not errors

    def run(self) -> int:
        """Connect, publish everything, wait for the last confirm, close; returns the confirmed count."""
        if self._total == 0:
            return 0
        self._connection = pika.SelectConnection(
            self._parameters,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_connection_closed,
        )
        self._connection.ioloop.call_later(self._timeout, self._on_timeout)
        self._connection.ioloop.start()
        return self.confirmed

    def _fail(self, reason: str) -> None:
        if self.error is None and not self._finished:
            self.error = reason
        if self._connection is not None and not (self._connection.is_closing or self._connection.is_closed):
            self._connection.close()

    def _on_open_error(self, _connection: Any, error: Any) -> None:
        self.error = self.error or f"cannot connect: {error!r}"
        self._connection.ioloop.stop()

    def _on_connection_closed(self, _connection: Any, reason: Any) -> None:
        if not self._finished and self.error is None:
            self.error = f"connection closed: {reason!r}"
        self._connection.ioloop.stop()

    def _on_timeout(self) -> None:
        self._fail(f"timed out after {self._timeout:.0f} s with {len(self._outstanding)} unconfirmed")

    def _on_connection_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(lambda _ch, reason: self._fail(f"channel closed: {reason!r}"))
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: self._publish_more()
        )

    def _on_return(self, _channel: Any, _method: Any, _properties: Any, _body: bytes) -> None:
        # mandatory=True: a returned message means its queue disappeared under us.
        self._fail(f"a message to queue {_method.routing_key!r} was returned as unroutable (queue deleted?)")

    def _publish_more(self) -> None:
        while not self._exhausted and len(self._outstanding) < CONFIRM_WINDOW and self.error is None:
            key = next(self._keys, None)
            if key is None:
                self._exhausted = True
                break
            self._channel.basic_publish("", key, self._body, self._properties, mandatory=True)
            self._outstanding[self._next_tag] = key
            self._next_tag += 1
        if self._exhausted and not self._outstanding and self.error is None:
            self._finished = True
            self._connection.close()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            queue = self._outstanding.get(method.delivery_tag, "?")
            self._fail(f"the broker refused (nack) a message to queue {queue!r}")
            return
        if method.multiple:
            for tag in [t for t in self._outstanding if t <= method.delivery_tag]:
                del self._outstanding[tag]
                self.confirmed += 1
        elif self._outstanding.pop(method.delivery_tag, None) is not None:
            self.confirmed += 1
        self._publish_more()
