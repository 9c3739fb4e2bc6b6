"""The shared tier's URL and clients against real servers: standalone, Cluster, Sentinel."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcached.errors import ConfigError
from semcached.index.shared.target import SharedTierError, parse_target, resolve
from tests.redis_servers import RedisCluster, RedisSentinel, RedisServer


@pytest.mark.parametrize(
    "url",
    ["http://x", "redis://", "redis+sentinel://h:1", "redis+sentinel://h:x/m", "mysql://h/db"],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(url)


def test_sentinel_url_keeps_credentials_for_the_data_nodes() -> None:
    target = parse_target("rediss+sentinel://app:s%40cret@a:1,b:2/main/4")
    assert target.mode == "sentinel"
    assert target.sentinels == (("a", 1), ("b", 2))
    assert target.service == "main"
    assert target.options == {"db": 4, "username": "app", "password": "s@cret", "ssl": True}
    assert "s%40cret" not in target.redacted


async def test_standalone_sync_and_async(redis_server: RedisServer) -> None:
    target = await resolve(parse_target(redis_server.url))
    assert target.mode == "standalone"
    sync = target.connect()
    sync.set("k", b"v")
    client = target.connect_async()
    assert await client.get("k") == b"v"
    await client.aclose()
    sync.close()


async def test_cluster_is_detected_and_follows_slots(redis_cluster: RedisCluster) -> None:
    target = await resolve(parse_target(redis_cluster.url))
    assert target.mode == "cluster"
    client = target.connect_async()
    for i in range(50):  # keys over every master
        await client.set(f"key{i}", i)
    assert [int(await client.get(f"key{i}")) for i in range(50)] == list(range(50))
    await client.aclose()


async def test_acl_user_and_wrong_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "acl", ["user app on >pw ~* +@all", "user default off"])
    try:
        good = await resolve(parse_target(f"redis://app:pw@127.0.0.1:{server.port}"))
        client = good.connect_async()
        assert await client.ping()
        await client.aclose()
        with pytest.raises(SharedTierError, match=r"\*\*\*"):
            await resolve(parse_target(f"redis://app:wrong@127.0.0.1:{server.port}"))
    finally:
        server.stop()


async def test_unreachable_is_a_shared_tier_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "gone")
    url = server.url
    server.stop()
    with pytest.raises(SharedTierError, match="cannot reach"):
        await resolve(parse_target(url, timeout_s=0.5))


async def test_sentinel_client_finds_the_master(tmp_path: Path) -> None:
    sentinel = RedisSentinel(tmp_path / "sentinel")
    try:
        target = await resolve(parse_target(sentinel.url))
        client = target.connect_async()
        await client.set("k", b"v")
        assert sentinel.master.client().get("k") == b"v"
        await client.aclose()
    finally:
        sentinel.stop()


async def test_tls_with_an_acl_user(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "tls", ["user app on >pw ~* +@all"], tls=True)
    try:
        url = f"rediss://app:pw@127.0.0.1:{server.port}?ssl_ca_certs={server.ca_file}"
        target = await resolve(parse_target(url))
        client = target.connect_async()
        assert await client.set("k", b"v")
        await client.aclose()
        with pytest.raises(SharedTierError):  # plain text to a TLS port
            await resolve(parse_target(f"redis://app:pw@127.0.0.1:{server.port}", timeout_s=0.5))
    finally:
        server.stop()
