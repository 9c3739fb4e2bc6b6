"""The daemon's current token table: the Authorization header in, a principal out.

The table comes from the settings: the tokens file (``auth.tokens_file``), else the
single ``server.auth_token``, else none at all (open). :meth:`Authenticator.reload`
rereads the file (on SIGHUP) and swaps the table in one assignment; a file that no
longer parses leaves the old table serving and logs why. Tokens are never logged:
only digests are kept, and messages name a token by its label.

Answers follow RFC 6750: a missing or unknown token is a 401 with
``WWW-Authenticate: Bearer realm="semcached"`` (plus ``error="invalid_token"`` when
one was sent), a missing scope a 403 ``insufficient_scope``, a tenant over its rate
a 429 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from semcached.errors import (
    AuthenticationError,
    ConfigError,
    PermissionDeniedError,
    TooManyRequestsError,
)
from semcached.protocol.codes import ErrorCode
from semcached.service.auth.ratelimit import RateLimiter
from semcached.service.auth.scopes import Scope
from semcached.service.auth.tenants import Principal, TenantLimits, laptop_principal
from semcached.service.auth.tokens import (
    TokenTable,
    load_tokens_file,
    open_table,
    single_token_table,
)
from semcached.service.config import Settings

__all__ = ["REALM", "Authenticator", "table_from_settings"]

log = logging.getLogger(__name__)

REALM = "semcached"
_CHALLENGE = f'Bearer realm="{REALM}"'
_OPEN_PRINCIPAL = laptop_principal()  # every request of the open mode acts as it


def table_from_settings(settings: Settings) -> TokenTable:
    """The table the settings call for; ConfigError for a bad tokens file."""
    if settings.auth.tokens_file:
        defaults = TenantLimits.from_settings(settings.auth)
        return load_tokens_file(Path(settings.auth.tokens_file), defaults)
    if settings.server.auth_token:
        return single_token_table(settings.server.auth_token)
    return open_table()


class Authenticator:
    """Loop-only, except :meth:`load`, which reads the file (run it on a worker)."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self._settings = settings
        self.table = table_from_settings(settings)
        self._limiter = RateLimiter()
        self._failures = Counter(
            "semcached_auth_failures",
            "Requests refused before any tenant was known, by reason (missing, invalid).",
            ["reason"],
            registry=registry,
        )
        self._tenant_requests = Counter(
            "semcached_tenant_requests",
            "Authenticated requests, by tenant and outcome (allowed, rate_limited, "
            "forbidden: a scope or namespace the token lacks).",
            ["tenant", "outcome"],
            registry=registry,
        )
        # Cached label children: the client library's per-call label lookup costs more
        # than the whole authentication (as in HttpMetrics).
        self._counted: dict[tuple[str, str], Any] = {}
        self._reloads = Counter(
            "semcached_auth_reloads",
            "Rereads of the tokens file, by result (ok, failed: the old table kept).",
            ["result"],
            registry=registry,
        )

    @property
    def required(self) -> bool:
        return self.table.mode != "open"

    # -- requests ------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> Principal:
        """The principal of an ``Authorization`` header; a 401 when there is none."""
        table = self.table
        if table.mode == "open":
            return _OPEN_PRINCIPAL
        if header is None or not header.strip():
            self._failures.labels("missing").inc()
            raise AuthenticationError(
                ErrorCode.UNAUTHORIZED,
                "this route needs Authorization: Bearer <token>",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
        principal = None
        # The header came off the wire as bytes decoded with surrogates for non-UTF-8;
        # a token is ASCII, so anything else is simply not one (and never encoded).
        if header.isascii():
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                principal = table.lookup(token.strip().encode("ascii"))
        if principal is None:
            self._failures.labels("invalid").inc()
            raise AuthenticationError(
                ErrorCode.UNAUTHORIZED,
                "the bearer token in the Authorization header is not valid",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            )
        return principal

    def admit(self, principal: Principal) -> None:
        """Count the request against its tenant's rate; a 429 when over it."""
        wait = self._limiter.acquire(principal.tenant)
        tenant = principal.tenant.name
        if wait > 0:
            self._count(tenant, "rate_limited")
            raise TooManyRequestsError(
                ErrorCode.RATE_LIMITED,
                f"tenant {tenant!r} is over its {principal.tenant.limits.requests_per_s:g} "
                "requests per second",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        self._count(tenant, "allowed")

    def require(self, principal: Principal, scope: Scope) -> None:
        """A 403 ``insufficient_scope`` unless the token grants ``scope``."""
        if not principal.can(scope):
            raise self.forbidden(
                principal,
                PermissionDeniedError(
                    ErrorCode.INSUFFICIENT_SCOPE,
                    f"this route needs the {scope.value} scope, which the token lacks",
                    headers={
                        "WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope", '
                        f'scope="{scope.value}"'
                    },
                ),
            )

    def forbidden(
        self, principal: Principal, error: PermissionDeniedError
    ) -> PermissionDeniedError:
        """``error``, counted as a forbidden request of the principal's tenant."""
        self._count(principal.tenant.name, "forbidden")
        return error

    def _count(self, tenant: str, outcome: str) -> None:
        child = self._counted.get((tenant, outcome))
        if child is None:
            child = self._counted[tenant, outcome] = self._tenant_requests.labels(tenant, outcome)
        child.inc()

    # -- reloads -------------------------------------------------------------------------

    def load(self) -> TokenTable | None:
        """Reread the tokens file (blocking); None (and a log line) when it is bad or
        when there is no file to reread."""
        if self.table.mode != "file":
            log.info("SIGHUP: no tokens file to reread (%s)", self.table.mode)
            return None
        try:
            return table_from_settings(self._settings)
        except ConfigError as exc:
            self._reloads.labels("failed").inc()
            log.error("tokens file not reloaded, the previous one stays in force: %s", exc)
            return None

    def install(self, table: TokenTable) -> None:
        """Serve ``table`` from now on (loop thread)."""
        self.table = table
        self._limiter.forget_others(set(table.tenants))
        self._reloads.labels("ok").inc()
        log.info("tokens file reloaded: %s", table.describe())
