"""Clients for the semcached daemon: :class:`SemcachedClient` (blocking) and
:class:`AsyncSemcachedClient` (asyncio), sharing one command layer."""

from semcached.clients.aio import AsyncSemcachedClient
from semcached.clients.commands import Readiness, Request
from semcached.clients.retry import RetryPolicy
from semcached.clients.sync import SemcachedClient

__all__ = ["AsyncSemcachedClient", "Readiness", "Request", "RetryPolicy", "SemcachedClient"]
