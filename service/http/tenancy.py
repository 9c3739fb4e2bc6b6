"""What the routes ask of the request's principal: namespaces, the KV tenant, quotas.

The auth middleware has checked the route's scope; a handler checks what its body
or query names. A namespace outside the token's is a 403 ``namespace_forbidden``
whether or not the namespace holds anything, so the answer says nothing about
other tenants' data (a namespace's *name* is configuration, not data). Inside its
namespaces a token sees only what is there: another tenant's entry id is a 404.
"""

from __future__ import annotations

import functools

from aiohttp import web

from semcached.errors import BadRequestError, PermissionDeniedError
from semcached.index.kv_meta import scope_key
from semcached.protocol.codes import ErrorCode
from semcached.service.auth.tenants import Principal
from semcached.service.http.appkeys import AUTH, PRINCIPAL, SETTINGS
from semcached.service.kv.types import KvTenant
from semcached.service.semantic.types import TenantQuota

__all__ = ["kv_tenant", "namespace", "principal", "semantic_quota"]


def principal(request: web.Request) -> Principal:
    """Who the request acts as (set by the auth middleware on every /v1/ route)."""
    return request[PRINCIPAL]


def namespace(request: web.Request, value: str) -> str:
    """``value`` if the daemon accepts the namespace (400) and the token may name it
    (403); the route's scope was checked before the handler ran."""
    allowed = request.app[SETTINGS].semantic.namespaces
    if allowed and value not in allowed:
        raise BadRequestError(
            ErrorCode.UNKNOWN_NAMESPACE, f"unknown namespace {value!r}", field="namespace"
        )
    caller = principal(request)
    if not caller.may_name(value):
        raise request.app[AUTH].forbidden(
            caller,
            PermissionDeniedError(
                ErrorCode.NAMESPACE_FORBIDDEN,
                f"the token may not use namespace {value!r}",
                field="namespace",
            ),
        )
    return value


def semantic_quota(request: web.Request) -> TenantQuota | None:
    """The caller's tenant quota, if it has one."""
    tenant = principal(request).tenant
    limits = tenant.limits
    if not (limits.semantic_max_entries or limits.semantic_max_bytes):
        return None
    return TenantQuota(
        tenant.name,
        tenant.namespaces.matches,
        limits.semantic_max_entries,
        limits.semantic_max_bytes,
    )


def kv_tenant(request: web.Request) -> KvTenant:
    """The caller's chunk KV scope, lease ownership and caps."""
    tenant = principal(request).tenant
    limits = tenant.limits
    return KvTenant(
        scope=_scope(tenant.kv_scope),
        owner=tenant.name,
        max_leases=limits.max_leases,
        max_pinned_bytes=limits.max_pinned_bytes,
        max_bytes=limits.kv_max_bytes,
    )


@functools.lru_cache(maxsize=1024)
def _scope(name: str) -> bytes:
    return scope_key(name)
