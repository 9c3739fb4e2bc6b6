"""Clients for the semcached daemon: :class:`SemcachedClient` (blocking) and
:class:`AsyncSemcachedClient` (asyncio), sharing one command layer
(:mod:`semcached.clients.api`); :func:`put_meta` builds a chunk put's metadata."""

from semcached.clients.aio import AsyncSemcachedClient
from semcached.clients.commands import Readiness
from semcached.clients.kv import put_meta
from semcached.clients.request import Request
from semcached.clients.retry import RetryPolicy
from semcached.clients.sync import SemcachedClient

__all__ = [
    "AsyncSemcachedClient",
    "Readiness",
    "Request",
    "RetryPolicy",
    "SemcachedClient",
    "put_meta",
]
