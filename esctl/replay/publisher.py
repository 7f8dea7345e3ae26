"""The queue replay's publisher: each event in one transaction, as the library's publisher
sends it, many transactions to a round trip, the next batches made while some are in flight
(how it sends them, and why three ways: docs/design/replay.md, "The publisher's transaction")."""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis.cluster

from esctl import inflight, interrupts, layout, redisio
from esctl.errors import EsctlError
from esctl.locks import RedisLock
from esctl.projections import Event
from esctl.replay.pacing import Pacer
from esctl.replay.summary import ReplaySummary

PUBLISH_BATCH = 500
"""Events whose transactions go to Redis in one round trip (at a distance, more:
:class:`Publisher`'s ``round_trip_s``)."""

IN_FLIGHT = 2
"""Batches sent whose answers are not read yet, at most: while Redis runs one (and the network
carries it), the next is already behind it, and the publisher makes the one after."""

PUBLISH_SCRIPT = """
-- KEYS: the subscribers' PublishedEvents lists (one {ENV:TYPE} slot); ARGV[1] channel,
-- ARGV[2] the message. The library's publish, atomic: LPUSH to each, then one notification.
-- An ACL user refused a push or the notification (Redis 7) is refused before any change.
if redis.acl_check_cmd then
  for i = 1, #KEYS do
    if not redis.acl_check_cmd('LPUSH', KEYS[i], ARGV[2]) then
      return redis.error_reply('NOPERM this user has no permissions to run the LPUSH command on '
        .. KEYS[i] .. '; nothing was published')
    end
  end
  if not redis.acl_check_cmd('PUBLISH', ARGV[1], '1') then
    return redis.error_reply('NOPERM this user has no permissions to PUBLISH to ' .. ARGV[1]
      .. '; nothing was published')
  end
end
for i = 1, #KEYS do redis.call('LPUSH', KEYS[i], ARGV[2]) end
redis.call('PUBLISH', ARGV[1], '1')
return #KEYS
"""

_MULTI = (b"MULTI",)
_EXEC = (b"EXEC",)
_MULTI_RESP = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC_RESP = b"*1\r\n$4\r\nEXEC\r\n"


_Failure = tuple[int, Exception | None, tuple[Event, str, str]]
"""An event whose transaction did not run: its position in its batch, the refusal when it was
a NOPERM, and (event, key, error)."""


class PublishFailed(Exception):
    """Transactions did not run. The events before the first of them were published, and
    nothing was sent once its answer was read; of the events sent after it before that (the
    rest of its batch, and the batch in flight behind it), ``published_after`` were published,
    and ``failures`` holds the first and every other that failed: (event, key, error)."""

    def __init__(self, failures: list[tuple[Event, str, str]], *, published_after: int = 0) -> None:
        event, key, detail = failures[0]
        super().__init__(detail)
        self.event = event
        self.key = key
        self.detail = detail
        self.failures = failures
        self.published_after = published_after


def _refusal_text(refusal: Exception) -> str:
    """A NOPERM that stopped a run part-way, as its failure's text: what was refused, and what
    to do (the ACL rules esctl's queue user needs)."""
    hint = getattr(refusal, "hint", None)
    return f"{refusal} ({hint})" if hint else str(refusal)


class Publisher:
    """Publishes events as the library's publisher does: per event, LPUSH the uncompressed
    JSON onto ``SUB:{ENV:TYPE}:PublishedEvents`` of each subscriber, then PUBLISH ``1`` on
    ``ENV:TYPE``, in one MULTI/EXEC transaction (on a Redis Cluster: one Lua script, as
    atomic). Counts what it published in ``summary``; raises :class:`PublishFailed` at the
    first event whose transaction did not run, and ``lock``'s LockLost once its renewal found
    it gone (the answers in flight read and counted first; ``unsent``: the first event not
    sent).

    ``max_queue_length``: events are sent only as far as no list would grow past the cap;
    while a list is at the cap it waits (polling, up to 1 s apart).

    ``round_trip_s``: Redis's round trip, when batches may grow with it
    (:class:`esctl.inflight.BatchGrowth`: the round trip a tenth of a batch's time at most, up
    to 20 times ``batch``; at 1 ms each way a 500-event batch waited about as long as it took
    to build).

    On a single server up to :data:`IN_FLIGHT` batches are in flight while the next is
    gathered and encoded; the oldest one's answers are checked before another is sent, so
    nothing is sent once a failed transaction is seen (what was sent behind it ran, and is
    counted). :meth:`flush` waits for them all; use the publisher as a context manager (or
    :meth:`close` it) so that an error elsewhere still reads what was sent."""

    def __init__(
        self,
        client: redisio.RedisClient,
        env: str,
        routes: dict[str, tuple[str, ...]],
        summary: ReplaySummary,
        *,
        max_queue_length: int | None = None,
        batch: int = PUBLISH_BATCH,
        pacer: Pacer | None = None,
        lock: RedisLock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        round_trip_s: float = 0.0,
    ) -> None:
        self.client = client
        self.routes = routes
        self.summary = summary
        self.max_queue_length = max_queue_length
        self.growth = inflight.BatchGrowth(batch, round_trip_s)
        self.pacer = pacer or Pacer(None, sleep)
        self.lock = lock
        self.sleep = sleep
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        self.pending: list[Event] = []
        self.channel: redisio.RespChannel | None = None
        self.in_flight: deque[list[Event]] = deque()
        """The batches sent on ``channel`` whose answers are not read yet, oldest first."""
        self.unsent: Event | None = None
        """Once the lock was lost: the first event not sent (the run sends nothing more)."""
        self.last: Event | None = None
        """The last event counted as published (they are published in order)."""
        self.sending: list[Event] = []
        """The batch being sent when its send is not a batch in flight yet."""
        self.broke = False
        """A second Ctrl-C or SIGTERM stopped a wait for Redis's answer (:attr:`in_doubt`):
        Redis may not answer at all."""
        self._raw = not self.cluster
        """Whether to try the raw single-server path (:func:`esctl.redisio.resp_channel`)."""
        self.keys = {
            t: [layout.queue_key(s, env, t, "published") for s in subs]
            for t, subs in routes.items()
        }
        self.channels = {t: layout.notification_channel(env, t) for t in routes}
        # the commands pre-encoded: packing them is most of the publisher's own CPU time
        self.lpush = {
            t: [(b"LPUSH", redisio.key_bytes(k)) for k in keys] for t, keys in self.keys.items()
        }
        self.publish = {
            t: (b"PUBLISH", redisio.key_bytes(channel), b"1")
            for t, channel in self.channels.items()
        }
        # the same as RESP, for the single-server path: per event only the payload is encoded
        self.resp_head = {
            t: [
                b"*3\r\n$5\r\nLPUSH\r\n" + redisio.resp_bulk(key) + key + b"\r\n"
                for _, key in lpushes
            ]
            for t, lpushes in self.lpush.items()
        }
        self.resp_tail = {
            t: redisio.resp_command(*publish) + _EXEC_RESP for t, publish in self.publish.items()
        }

    def add(self, event: Event) -> bool:
        """Queue ``event`` for publishing; False when no chosen subscriber takes its type."""
        if event.event_type not in self.keys:
            unpublished = self.summary.unpublished
            unpublished[event.event_type] = unpublished.get(event.event_type, 0) + 1
            return False
        self.pending.append(event)
        if len(self.pending) >= self.batch:
            chunk, self.pending = self.pending, []
            self._publish(chunk)  # its answers are read later: while the next batches are made
            self.growth.done(len(chunk))
        return True

    @property
    def batch(self) -> int:
        """Events whose transactions go to Redis in one round trip now."""
        return self.growth.size

    def flush(self) -> None:
        """Publish every event added so far, and wait for Redis's answers."""
        chunk, self.pending = self.pending, []
        self._publish(chunk)
        self._collect()

    def close(self) -> None:
        """Read the answers to what is in flight (counting what was published; a failed
        transaction there is not raised: close runs when something else went wrong, Ctrl-C
        too), then close the connection."""
        try:
            if self.in_flight and self.channel is not None and self.channel.conn is not None:
                with contextlib.suppress(PublishFailed, redis.exceptions.RedisError, EsctlError):
                    self._collect()
        finally:
            if self.channel is not None:
                self.channel.close()
                self.channel = None

    @property
    def in_doubt(self) -> int:
        """Events sent whose answers were not read: a second Ctrl-C or SIGTERM stopped the wait
        for them (or the connection failed), so whether they were published is not known."""
        return len(self.sending) + sum(len(chunk) for chunk in self.in_flight)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _publish(self, chunk: list[Event]) -> None:
        waited = 0.05
        while chunk:
            if self.lock is not None and self.lock.lost:
                # Send no more. What is in flight is read and counted first (a transaction
                # there that did not run is the earlier stop: PublishFailed).
                self._collect()
                self.unsent = chunk[0]
                self.lock.check()
            part = chunk
            if self.max_queue_length is not None:
                self._collect()  # the lengths must include what is in flight
                part = chunk[: self._room(chunk)]
                if not part:
                    self.sleep(waited)
                    self.summary.waited_s += waited
                    waited = min(1.0, waited * 2)
                    continue
                waited = 0.05
            self.pacer.wait(len(part))
            self._send(part)
            chunk = chunk[len(part) :]

    def _room(self, chunk: Sequence[Event]) -> int:
        """How many of ``chunk``'s events fit before some list reaches the cap."""
        assert self.max_queue_length is not None
        keys = sorted({k for e in chunk for k in self.keys[e.event_type]})
        room = {
            k: self.max_queue_length - n
            for k, n in zip(keys, redisio.list_lengths(self.client, keys), strict=True)
        }
        for index, event in enumerate(chunk):
            targets = self.keys[event.event_type]
            if any(room[k] <= 0 for k in targets):
                return index
            for k in targets:
                room[k] -= 1
        return len(chunk)

    def _send(self, chunk: list[Event]) -> None:
        """Send ``chunk``'s transactions. Ctrl-C and SIGTERM wait while a batch is sent and
        its answers read and counted (here, or in :meth:`_collect`), so that an interrupted
        run knows exactly what it published; a second one stops the wait for Redis, and
        leaves the batch :attr:`in_doubt`."""
        if self.cluster or self._channel() is None:
            with interrupts.interrupts_held() as hold:
                self.sending = chunk
                with self._waiting(hold):
                    if self.cluster:
                        failures = self._script_failures(chunk)
                    else:  # no raw connection (resp.RAW_TLS off): redis-py's pipeline
                        failures = self._failures(chunk, self._send_commands(chunk))
                self.sending = []
                self._settle([(chunk, failures)])
            return
        data, count = self._encode(chunk)
        if len(self.in_flight) >= IN_FLIGHT:
            self._collect(keep=IN_FLIGHT - 1)  # a failed transaction stops here, this one unsent
        channel = self.channel
        assert channel is not None
        with interrupts.interrupts_held() as hold:
            self.sending = chunk
            with self._waiting(hold):
                channel.send(data, count)
            self.sending = []
            self.in_flight.append(chunk)

    @contextlib.contextmanager
    def _waiting(self, hold: interrupts.Hold) -> Iterator[None]:
        """``hold``'s wait for Redis (a second signal stops it), noting in :attr:`broke` that
        one did."""
        try:
            with hold.waiting():
                yield
        except KeyboardInterrupt:
            if hold.broke:
                self.broke = True
            raise

    def _channel(self) -> redisio.RespChannel | None:
        if self.channel is None and self._raw:
            self.channel = redisio.resp_channel(self.client)
            self._raw = self.channel is not None
        return self.channel

    def _collect(self, keep: int = 0) -> None:
        """Read and check the answers to the batches in flight, oldest first, until ``keep``
        are left; after a failed transaction, all of them (those sent behind it ran too)."""
        assert self.channel is not None or not self.in_flight
        answered: list[tuple[list[Event], list[_Failure]]] = []
        with interrupts.interrupts_held() as hold:
            try:
                while len(self.in_flight) > keep:
                    assert self.channel is not None
                    with self._waiting(hold):
                        replies = self.channel.receive()
                    chunk = self.in_flight.popleft()
                    failures = self._failures(chunk, replies)
                    answered.append((chunk, failures))
                    if failures:
                        keep = 0
            except KeyboardInterrupt:  # a second signal: what was answered is counted all the same
                with contextlib.suppress(PublishFailed, EsctlError):
                    self._settle(answered)
                raise
            self._settle(answered)

    def _failures(self, chunk: Sequence[Event], replies: list[Any]) -> list[_Failure]:
        """The events of ``chunk`` whose transaction did not run: (position, the refusal
        when it was a NOPERM, (event, key, error)).

        EXEC answers a list of the LPUSH and PUBLISH results (integers) when the transaction
        ran; an error (EXECABORT after a refused command, "EXEC without MULTI") otherwise."""
        index = -1
        failed: list[_Failure] = []
        for number, event in enumerate(chunk):
            index += len(self.lpush[event.event_type]) + 3
            executed = replies[index]
            if type(executed) is not list or not all(type(r) is int for r in executed):
                answered = replies[index - len(self.lpush[event.event_type]) - 2 : index + 1]
                reply = next((r for r in answered if isinstance(r, Exception)), executed)
                denied = None
                if redisio.is_denied(reply):  # queued commands refused: nothing ran
                    denied = self._denied(event, answered.index(reply), reply)
                key = self.keys[event.event_type][0]
                failed.append((number, denied, (event, key, str(reply))))
        return failed

    def _settle(self, answered: list[tuple[list[Event], list[_Failure]]]) -> None:
        """Count the events whose transaction ran, of the batches ``answered`` (in the order
        sent, each with its failures); when any did not run, raise :class:`PublishFailed`, or
        the refusal itself (NOPERM) when the run has published nothing."""
        failures: list[_Failure] = []
        after = 0  # events published after the first that failed
        for chunk, failed in answered:
            numbers = {number for number, _, _ in failed}
            ran = [e for n, e in enumerate(chunk) if n not in numbers]
            self._count(ran)
            if failures:
                after += len(ran)
            elif failed:
                after += sum(1 for n in range(failed[0][0] + 1, len(chunk)) if n not in numbers)
            failures.extend(failed)
        if not failures:
            return
        denied = failures[0][1]
        if denied is not None and not self.summary.notifications:
            raise denied  # nothing was published: the refusal is the answer
        raise PublishFailed(
            [
                (event, key, detail if refusal is None else _refusal_text(refusal))
                for _, refusal, (event, key, detail) in failures
            ],
            published_after=after,
        )

    def _denied(self, event: Event, position: int, reply: Exception) -> Exception:
        """The error for a transaction whose ``position``-th reply (MULTI, the LPUSHes,
        PUBLISH, EXEC) is a NOPERM: which command on which key or channel was refused."""
        keys = self.keys[event.event_type]
        if 1 <= position <= len(keys):
            command, subject = "LPUSH", keys[position - 1]
        else:
            command, subject = "PUBLISH", f"channel {self.channels[event.event_type]}"
        return redisio.permission_denied(
            redisio.describe(self.client), reply, command=command, key=subject
        )

    def _script_failures(self, chunk: Sequence[Event]) -> list[_Failure]:
        """Redis Cluster: one :data:`PUBLISH_SCRIPT` per event, each node sent its events in
        one round trip; the events whose script did not run (as :meth:`_failures`). A node
        that refuses some (NOPERM) does not stop the others' answers being read and counted:
        its refusals come back as failures like any other."""
        replies = redisio.eval_pipelined(
            self.client,
            PUBLISH_SCRIPT,
            [
                (len(self.keys[e.event_type]), *self.keys[e.event_type],
                 self.channels[e.event_type], e.payload)
                for e in chunk
            ],
            refuse_denied=False,
        )  # fmt: skip
        failed: list[_Failure] = []
        for number, (event, reply) in enumerate(zip(chunk, replies, strict=True)):
            if isinstance(reply, Exception):
                denied = None
                if redisio.is_denied(reply):  # the script checks before any change
                    denied = redisio.permission_denied(
                        redisio.describe(self.client),
                        reply,
                        command="EVALSHA",
                        key=self.keys[event.event_type][0],
                    )
                channel = self.channels[event.event_type]
                failed.append((number, denied, (event, channel, str(reply))))
        return failed

    def _encode(self, chunk: Sequence[Event]) -> tuple[bytes, int]:
        """MULTI, LPUSH per subscriber, PUBLISH, EXEC for each event as one RESP buffer, and
        the number of commands in it."""
        parts: list[bytes] = []
        append = parts.append
        count = 0
        for event in chunk:
            payload = event.payload
            header = redisio.resp_bulk(payload)
            append(_MULTI_RESP)
            heads = self.resp_head[event.event_type]
            for head in heads:
                append(head)
                append(header)
                append(payload)
                append(b"\r\n")
            append(self.resp_tail[event.event_type])
            count += len(heads) + 3
        return b"".join(parts), count

    def _send_commands(self, chunk: Sequence[Event]) -> list[Any]:
        """The same transactions as command tuples, through redis-py's pipeline."""
        commands: list[tuple[Any, ...]] = []
        append = commands.append
        for event in chunk:
            payload = event.payload
            append(_MULTI)
            for lpush in self.lpush[event.event_type]:
                append((*lpush, payload))
            append(self.publish[event.event_type])
            append(_EXEC)
        return redisio.pipelined(self.client, commands, chunk=len(commands))

    def _count(self, events: Sequence[Event]) -> None:
        if events:
            self.last = events[-1]
        summary = self.summary
        for event_type, n in Counter(e.event_type for e in events).items():
            subscribers = self.routes[event_type]
            for sub in subscribers:
                per_type = summary.published.setdefault(sub, {})
                per_type[event_type] = per_type.get(event_type, 0) + n
            summary.messages += n * len(subscribers)
            summary.notifications += n
