"""The live stream: one follower task reads what the daemon appends to the audit log (``AuditIndex.refresh``, a few
times a second) and hands each new record to every connected client as a server-sent event
(https://html.spec.whatwg.org/multipage/server-sent-events.html).

Each client has a bounded queue; a client that does not keep up (its queue full) is disconnected rather than
letting memory grow — its page reconnects and reloads the log. Nothing here touches the daemon: it only reads the
file the daemon already writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from facegate.console.audit_reader import AuditIndex

log = logging.getLogger(__name__)

#: Seconds between looks at the audit log.
POLL_S = 0.25
#: Records a client may have waiting before it is dropped.
QUEUE_MAX = 1000
#: Seconds between keep-alive comments (proxies close idle connections after ~60 s).
KEEPALIVE_S = 15.0


class Broadcaster:
    """Fan-out of new audit records to subscribers (asyncio queues; ``None`` in a queue means "you were dropped")."""

    def __init__(self, index: AuditIndex, poll_s: float = POLL_S) -> None:
        self.index = index
        self.poll_s = poll_s
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_MAX + 1)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(q)

    def publish(self, records: list[dict[str, Any]]) -> None:
        for q in list(self._subscribers):
            for record in records:
                if q.qsize() >= QUEUE_MAX:
                    self._subscribers.discard(q)
                    q.put_nowait(None)
                    log.warning("event=stream_client_dropped reason=too_slow queued=%d", QUEUE_MAX)
                    break
                q.put_nowait(record)

    async def run(self) -> None:
        """Follow the audit log until cancelled."""
        while True:
            try:
                new = await asyncio.to_thread(self.index.refresh)
                if new:
                    self.publish(new)
            except Exception:  # an unreadable log for a moment must not end the stream for good
                log.exception("event=stream_follow_failed path=%s", self.index.path)
            await asyncio.sleep(self.poll_s)


def sse(record: dict[str, Any]) -> str:
    """One server-sent event: ``event: decision`` (with ``id:`` = the decision's seq) or ``event: admin``."""
    if isinstance(record.get("event"), dict):
        return f"id: {record.get('seq')}\nevent: decision\ndata: {json.dumps(record, ensure_ascii=False)}\n\n"
    return f"event: admin\ndata: {json.dumps(record, ensure_ascii=False)}\n\n"


async def event_stream(broadcaster: Broadcaster, keep: Callable[[dict[str, Any]], bool],
                       disconnected: Callable[[], Any]) -> AsyncIterator[str]:
    """The text of one client's stream: a greeting, then each record for which ``keep(record)`` holds, with
    keep-alive comments in between, until the client goes away (``await disconnected()``) or is dropped."""
    q = broadcaster.subscribe()
    try:
        yield "retry: 2000\n: connected\n\n"
        while True:
            try:
                record = await asyncio.wait_for(q.get(), KEEPALIVE_S)
            except TimeoutError:
                if await disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            if record is None:
                return
            if keep(record):
                yield sse(record)
    finally:
        broadcaster.unsubscribe(q)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel the follower task and wait for it."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
