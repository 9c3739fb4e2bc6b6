"""Clients for the semcached daemon: :class:`SemcachedClient` (blocking) and
:class:`AsyncSemcachedClient` (asyncio), sharing one command layer
(:mod:`semcached.clients.api`); :func:`put_meta` builds a chunk put's metadata;
:class:`FailOpenClient` and :class:`AsyncFailOpenClient` wrap them for gateways, whose
answer must not wait on, or fail with, the cache (:mod:`semcached.clients.failopen`)."""

from semcached.clients.aio import AsyncSemcachedClient
from semcached.clients.commands import Readiness
from semcached.clients.failopen import (
    AsyncFailOpenClient,
    FailOpenClient,
    FailOpenPolicy,
    FailOpenStats,
)
from semcached.clients.kv import put_meta
from semcached.clients.request import Request
from semcached.clients.retry import RetryPolicy
from semcached.clients.sync import SemcachedClient

__all__ = [
    "AsyncFailOpenClient",
    "AsyncSemcachedClient",
    "FailOpenClient",
    "FailOpenPolicy",
    "FailOpenStats",
    "Readiness",
    "Request",
    "RetryPolicy",
    "SemcachedClient",
    "put_meta",
]
