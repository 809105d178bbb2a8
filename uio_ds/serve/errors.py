"""Requests the server refuses, by how it answers them."""

from __future__ import annotations


class RequestError(ValueError):
    """A request that cannot be served as asked (the HTTP layer answers 400 with the message)."""


class SessionBusy(RequestError):
    """A second request for a session whose previous request is still running (409)."""


class Overloaded(RequestError):
    """The server holds as many requests as it queues (``max_queue``): 503, retry later."""
