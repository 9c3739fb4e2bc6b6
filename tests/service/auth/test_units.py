"""The auth package's parts on their own: patterns, buckets, digests, the header."""

from __future__ import annotations

import pytest

from semcached.errors import (
    AuthenticationError,
    PermissionDeniedError,
    TooManyRequestsError,
    api_error_class,
)
from semcached.service.auth.authenticator import Authenticator
from semcached.service.auth.ratelimit import RateLimiter
from semcached.service.auth.scopes import NamespacePatterns, Scope
from semcached.service.auth.tenants import DEFAULT_TENANT, Tenant, TenantLimits
from semcached.service.auth.tokens import new_token, single_token_table, token_digest
from semcached.service.config import load_settings


def test_namespace_patterns() -> None:
    patterns = NamespacePatterns(("acme", "team-*"))
    assert patterns.matches("acme")
    assert patterns.matches("team-a")
    assert patterns.matches("team-")
    assert not patterns.matches("acme2")
    assert not patterns.matches("team")
    assert NamespacePatterns(("*",)).matches("anything")
    assert NamespacePatterns(("*",)).everything
    assert not NamespacePatterns(()).matches("acme")
    for bad in ("a*b", "[ab]", "a?", "", "**"):
        with pytest.raises(ValueError, match="namespace pattern"):
            NamespacePatterns((bad,))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tenant(rate: float, burst: int) -> Tenant:
    return Tenant("t", NamespacePatterns(()), "t", TenantLimits(requests_per_s=rate, burst=burst))


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    t = tenant(2.0, 3)
    assert [limiter.acquire(t) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire(t) == pytest.approx(0.5)  # one token refills in 1/rate s
    clock.now += 0.25
    assert limiter.acquire(t) == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.acquire(t) == 0.0
    clock.now += 100  # refills up to the burst, no further
    assert [limiter.acquire(t) for _ in range(4)][-1] > 0
    assert RateLimiter(clock).acquire(tenant(0.0, 1)) == 0.0  # 0: unlimited
    changed = tenant(1.0, 10)  # a reload changed the limits: a fresh, full bucket
    assert all(limiter.acquire(changed) == 0.0 for _ in range(10))


def test_tokens_are_kept_and_found_by_digest() -> None:
    token = new_token()
    assert len(token) >= 43
    table = single_token_table(token)
    assert list(table.principals) == [token_digest(token)]
    principal = table.lookup(token.encode())
    assert principal is not None
    assert principal.tenant.name == DEFAULT_TENANT
    assert principal.scopes == frozenset(Scope)
    assert table.lookup(token.encode() + b"x") is None


def test_the_header_is_parsed_without_ever_encoding_what_came_off_the_wire() -> None:
    auth = Authenticator(load_settings(environ={"SEMCACHED_SERVER_AUTH_TOKEN": "tok"}))
    assert auth.authenticate("Bearer tok").tenant.name == DEFAULT_TENANT
    assert auth.authenticate("  bearer   tok ").tenant.name == DEFAULT_TENANT
    # aiohttp hands non-UTF-8 bytes over as lone surrogates; encoding them raised.
    for header in ("Bearer \udcff\udcfe", "Bearer tök", "Bearer", "", None, "Token tok"):
        with pytest.raises(AuthenticationError) as refused:
            auth.authenticate(header)
        assert refused.value.status == 401
        assert refused.value.headers["WWW-Authenticate"].startswith('Bearer realm="semcached"')


def test_clients_map_the_new_statuses_to_their_errors() -> None:
    assert api_error_class(403) is PermissionDeniedError
    assert issubclass(PermissionDeniedError, AuthenticationError)  # as 403 was before
    assert api_error_class(429) is TooManyRequestsError
