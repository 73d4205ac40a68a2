"""Ephemeral pull consumers that read a stream in order from a chosen sequence.

A cursor is a consumer of our own: in memory, ``AckPolicy.NONE``, delivering by start
sequence, named by the server and removed by it once unused for ``inactive`` seconds (or by
us on close). Nothing is acknowledged or kept on the server for us: the checkpoint lives in
the read model's transaction. Each pull asks for at most ``batch`` messages with
``no_wait``, so the server answers at once with what it has and ends with a status (404:
none, 408: fewer than asked); no request lingers to deliver later. Every pull has a reply
subject of its own, so a status left over from an earlier pull is told apart.

Messages of a pull arrive in stream order. The consumer's own delivery sequence must grow by
one from message to message; if it does not, a message was lost in transit (a reconnect)
and the cursor is ``Broken``: the caller drops it and reads again from its checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .mapping import Message

_ENDS_A_PULL = {"404", "408"}  # no messages; fewer than the batch (both end the request)


class Broken(Exception):
    """The cursor cannot go on (a status, a lost message, no answer): read from the
    checkpoint with a new one."""


class PullCursor:
    """One ephemeral consumer; ``position`` is the stream sequence it has handed out up to."""

    def __init__(self, client: Client, stream: str, name: str, position: int) -> None:
        self.position = position
        self.buffer: list[Message] = []
        """Messages pulled but not handed out yet (a page cut short by max_bytes)."""
        self.used = time.monotonic()
        self.name = name
        self._client = client
        self._stream = stream
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
        self._inbox = client.new_inbox()
        self._subscription: Subscription | None = None
        self._pulls = 0
        self._consumer_seq = 0

    @staticmethod
    async def create(
        client: Client, stream: str, after: int, timeout: float, idle: float
    ) -> PullCursor:
        """A new consumer delivering the messages after stream sequence ``after``."""
        js = client.jetstream(timeout=timeout)
        info = await js.add_consumer(stream, _config(None, after, idle), timeout=timeout)
        cursor = PullCursor(client, stream, info.name, after)
        cursor._subscription = await client.subscribe(f"{cursor._inbox}.*")
        return cursor

    async def pull(self, batch: int, timeout: float) -> list[Message]:
        """At most ``batch`` of the next messages, those the server has now (maybe none)."""
        assert self._subscription is not None
        self._pulls += 1
        reply = f"{self._inbox}.{self._pulls}"
        request = orjson.dumps({"batch": batch, "no_wait": True})
        await self._client.publish(self._next_subject, request, reply=reply)
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(messages) < batch:
            try:
                msg = await self._subscription.next_msg(max(0.001, deadline - time.monotonic()))
            except nats.errors.TimeoutError as exc:
                raise Broken(f"no answer to a pull within {timeout}s") from exc
            status = (msg.headers or {}).get("Status")
            if status is None:
                messages.append(self._accepted(msg))
            elif msg.subject == reply:  # (a status of an earlier pull is left over)
                if status in _ENDS_A_PULL:
                    break
                raise Broken(f"the consumer answered {status} {msg.headers}")
        self.used = time.monotonic()
        return messages

    def _accepted(self, msg: Msg) -> Message:
        metadata = msg.metadata  # (parsed from the reply subject at each access)
        sequence = metadata.sequence
        if sequence.consumer != self._consumer_seq + 1:
            raise Broken(f"delivery {self._consumer_seq + 1} was lost (got {sequence.consumer})")
        self._consumer_seq = sequence.consumer
        return Message(
            seq=sequence.stream,
            subject=msg.subject,
            headers={str(k): str(v) for k, v in (msg.headers or {}).items()},
            data=msg.data,
            time=stamp_of(metadata.timestamp),  # when the stream stored it
        )

    def idle_for(self) -> float:
        return time.monotonic() - self.used

    async def delete(self, timeout: float) -> None:
        """Unsubscribe and remove the consumer (best effort: the server removes it anyway
        once it has been inactive long enough)."""
        await self.discard()
        try:
            js = self._client.jetstream(timeout=timeout)
            await js.delete_consumer(self._stream, self.name)
        except (nats.errors.Error, OSError):
            pass  # gone already, or the connection is: the server's inactivity removes it

    async def discard(self) -> None:
        """Stop listening, waiting for no answer (after a failure, which may be the
        server's): the consumer is left to the server's inactivity limit."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await subscription.unsubscribe()  # (only queues UNSUB for the server)


async def pending_after(
    client: Client, stream: str, subject: str | None, after: int, timeout: float, idle: float
) -> int:
    """How many messages (on ``subject``) lie after stream sequence ``after``: a consumer
    made for the question says, and is deleted."""
    js = client.jetstream(timeout=timeout)
    info = await js.add_consumer(stream, _config(subject, after, idle), timeout=timeout)
    with contextlib.suppress(nats.errors.Error, OSError):
        await js.delete_consumer(stream, info.name)
    return info.num_pending or 0


def _config(subject: str | None, after: int, idle: float) -> ConsumerConfig:
    return ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=after + 1,
        ack_policy=AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=idle,
        mem_storage=True,
        num_replicas=1,
    )


def stamp_of(value: datetime | None) -> datetime:
    """A message time as an aware datetime (the server's are UTC)."""
    if value is None:
        return datetime.fromtimestamp(0, UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
