"""Conversations kept between requests: each session's ``MemoryStream`` and tokens, capped in
number (least recently used dropped first), expiring after a time without use, and reserved while
a request runs on them."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from uio_ds.model.generation import MemoryStream
from uio_ds.serve.errors import SessionBusy


@dataclass
class Session:
    stream: MemoryStream
    ids: list[int]
    fed: int  # tokens of ids the stream has read (all but the last generated one)
    last_used: float


class SessionStore:
    """Conversations' streams by id: at most ``max_sessions`` (least recently used dropped), each
    expiring ``ttl_s`` seconds after its last request."""

    def __init__(self, max_sessions: int = 32, ttl_s: float = 1800.0):
        self.max_sessions, self.ttl_s = max_sessions, ttl_s
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._items.items() if now - s.last_used > self.ttl_s]:
            del self._items[key]

    def reserve(self, key: str) -> None:
        """Mark the session busy for a request being submitted; a second request on it is refused
        at once (``SessionBusy``, HTTP 409) until ``put`` ends the first."""
        with self._lock:
            if key in self._busy:
                raise SessionBusy(f"session {key!r} is still answering a request: wait for it to finish")
            self._busy.add(key)

    def take(self, key: str) -> Session | None:
        """The session of a reserved key (removed from the store while its request runs), or None
        for a new one."""
        with self._lock:
            self._expire(time.monotonic())
            self._busy.add(key)
            return self._items.pop(key, None)

    def put(self, key: str, session: Session | None) -> None:
        with self._lock:
            self._busy.discard(key)
            if session is None:
                return
            session.last_used = time.monotonic()
            self._items[key] = session
            self._items.move_to_end(key)
            self._expire(session.last_used)
            while len(self._items) > self.max_sessions:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
