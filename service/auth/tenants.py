"""Tenants and the principal a request acts as.

A tenant owns semantic namespaces (by pattern), a chunk KV *scope* (the part of every
stored chunk key that keeps one tenant's chunks apart from another's), and limits.
A token belongs to one tenant and grants scopes, optionally over fewer namespaces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from semcached.service.auth.scopes import ALL_SCOPES, NamespacePatterns, Scope
from semcached.service.config import AuthSettings

__all__ = [
    "DEFAULT_TENANT",
    "LIMIT_FIELDS",
    "Principal",
    "Tenant",
    "TenantLimits",
    "laptop_principal",
]

DEFAULT_TENANT = "default"
"""The tenant of the laptop modes (no token, or the single ``server.auth_token``)."""


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's bounds; 0 means no per-tenant bound (the daemon-wide ones still hold)."""

    requests_per_s: float = 0.0
    burst: int = 1
    max_leases: int = 0
    max_pinned_bytes: int = 0
    semantic_max_entries: int = 0
    semantic_max_bytes: int = 0
    kv_max_bytes: int = 0

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> TenantLimits:
        """The defaults of a tenant of the tokens file: the ``[auth]`` settings."""
        return cls(**{name: getattr(auth, name) for name in LIMIT_FIELDS})


LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(TenantLimits))
"""The keys a ``[tenants.<name>]`` table may set to override the ``[auth]`` defaults."""


@dataclass(frozen=True, slots=True)
class Tenant:
    """``kv_scope``: tenants with the same scope share chunk KV; ``""`` is the store's
    unscoped keys (the laptop modes, and data written before tenants existed)."""

    name: str
    namespaces: NamespacePatterns
    kv_scope: str
    limits: TenantLimits


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: a tenant, through one token's scopes and namespaces.

    ``label`` names the token in logs (the file's ``name``, else the tenant), never
    the token itself.
    """

    tenant: Tenant
    scopes: frozenset[Scope]
    namespaces: NamespacePatterns
    label: str

    def can(self, scope: Scope) -> bool:
        return scope in self.scopes

    def may_name(self, namespace: str) -> bool:
        """Whether the token reaches ``namespace`` (its tenant's and its own patterns)."""
        return self.tenant.namespaces.matches(namespace) and self.namespaces.matches(namespace)


def laptop_principal() -> Principal:
    """Every scope over every namespace, unscoped chunk keys, no per-tenant limits."""
    everything = NamespacePatterns(("*",))
    tenant = Tenant(DEFAULT_TENANT, everything, "", TenantLimits())
    return Principal(tenant, ALL_SCOPES, everything, DEFAULT_TENANT)
