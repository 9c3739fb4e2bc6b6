"""Where the shared tier lives: one URL, three Redis topologies, sync and asyncio clients.

``redis://`` and ``rediss://`` (TLS) URLs name a standalone server or any node of a
Redis Cluster; which one is found by asking the node (``INFO cluster``) once, at
start (:func:`resolve`). ``redis+sentinel://`` and ``rediss+sentinel://`` name
Sentinels and the master they watch::

    redis+sentinel://[user:password@]host1:26379,host2:26379/service_name[/db]

User and password (ACL users included) authenticate to the data nodes; Sentinels are
reached without them. Every client gets the same socket timeouts and retries on
connection errors, so that a failover (Sentinel) or a slot move (Cluster, ``MOVED`` /
``ASK``, which redis-py's cluster client follows) costs a retry, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from semcached.errors import ConfigError, SemcachedError

__all__ = [
    "AsyncRedis",
    "RedisTarget",
    "SharedTierError",
    "SyncRedis",
    "parse_target",
    "resolve",
]

Mode = Literal["standalone", "cluster", "sentinel"]
SyncRedis = redis.Redis | redis.cluster.RedisCluster
AsyncRedis = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}


class SharedTierError(SemcachedError):
    """The shared tier cannot be reached or answered something unusable."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed shared-tier URL. ``mode`` is ``standalone`` until :func:`resolve`
    has asked the node whether it is part of a Cluster."""

    url: str
    mode: Mode
    timeout_s: float = 2.0
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # username, password, db, ssl

    @property
    def redacted(self) -> str:
        """The URL without its password, for logs and errors."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()

    def _common(self, *, asynchronous: bool = False) -> dict[str, Any]:
        backoff = ExponentialBackoff(cap=1.0, base=0.05)
        return {
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.timeout_s,
            "retry": AsyncRetry(backoff, 3) if asynchronous else Retry(backoff, 3),
            "health_check_interval": 15,
        }

    def connect(self) -> SyncRedis:
        """A blocking client (thread-safe: each command takes a pooled connection)."""
        common = self._common()
        if self.mode == "cluster":
            del common["health_check_interval"]
            return redis.cluster.RedisCluster.from_url(self.url, **common)
        if self.mode == "sentinel":
            sentinel = redis.sentinel.Sentinel(
                list(self.sentinels),
                sentinel_kwargs={"socket_timeout": self.timeout_s},
                **common,
                **self.options,
            )
            master: redis.Redis = sentinel.master_for(self.service, redis_class=redis.Redis)
            return master
        return redis.Redis.from_url(self.url, **common)

    def connect_async(self) -> AsyncRedis:
        """An asyncio client, for the event loop's tasks."""
        common = self._common(asynchronous=True)
        if self.mode == "cluster":
            del common["health_check_interval"]
            return redis.asyncio.cluster.RedisCluster.from_url(self.url, **common)
        if self.mode == "sentinel":
            sentinel = redis.asyncio.sentinel.Sentinel(
                list(self.sentinels),
                sentinel_kwargs={"socket_timeout": self.timeout_s},
                **common,
                **self.options,
            )
            master_async: redis.asyncio.Redis = sentinel.master_for(
                self.service, redis_class=redis.asyncio.Redis
            )
            return master_async
        return redis.asyncio.Redis.from_url(self.url, **common)


def parse_target(url: str, *, timeout_s: float = 2.0) -> RedisTarget:
    """Check the URL's form (no I/O); :class:`ConfigError` naming what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ConfigError(f"shared.redis_url {url!r} names no host")
        return RedisTarget(url=url, mode="standalone", timeout_s=timeout_s)
    if scheme not in _SENTINEL_SCHEMES:
        raise ConfigError(
            f"shared.redis_url must start with redis://, rediss://, redis+sentinel:// or "
            f"rediss+sentinel://, not {scheme + '://' if scheme else url!r}"
        )
    hosts = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for item in filter(None, hosts.split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        try:
            sentinels.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ConfigError(f"shared.redis_url: bad Sentinel address {item!r}") from None
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path:
        raise ConfigError(
            "shared.redis_url: a Sentinel URL is "
            "redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]"
        )
    options: dict[str, Any] = {"db": int(path[1]) if len(path) > 1 else 0}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    if _SENTINEL_SCHEMES[scheme]:
        options["ssl"] = True
    return RedisTarget(
        url=url,
        mode="sentinel",
        timeout_s=timeout_s,
        sentinels=tuple(sentinels),
        service=path[0],
        options=options,
    )


async def resolve(target: RedisTarget) -> RedisTarget:
    """``target`` with its mode settled: a ``redis://`` node that reports
    ``cluster_enabled`` is a Cluster. Raises :class:`SharedTierError` when the node
    cannot be reached or refuses the credentials."""
    if target.mode != "standalone":
        return target
    probe = target.connect_async()
    try:
        info = await probe.info("cluster")
    except redis.RedisError as exc:
        raise SharedTierError(f"cannot reach the shared tier at {target.redacted}: {exc}") from exc
    finally:
        await probe.aclose()
    if info.get("cluster_enabled"):
        return RedisTarget(url=target.url, mode="cluster", timeout_s=target.timeout_s)
    return target
