"""Tokens: how they are made, stored (SHA-256 digests only) and read from the tokens file.

The tokens file is TOML: tenants, then tokens as digests, never the tokens themselves::

    [tenants.acme]
    namespaces = ["acme", "acme-*"]   # semantic namespaces its tokens may name
    kv_scope = "acme"                 # optional (default: the tenant's name)
    requests_per_s = 50               # optional overrides of the [auth] defaults
    semantic_max_entries = 100000

    [[tokens]]
    sha256 = "5f0c…"                  # `semcached token new` prints a token and this
    tenant = "acme"
    scopes = ["semantic:read", "semantic:write", "kv:read", "kv:write"]
    namespaces = ["acme"]             # optional: fewer namespaces than the tenant's
    name = "acme-gateway"             # optional: how logs name the token

A table is replaced whole (:class:`TokenTable` is immutable), so a reload never
leaves a request seeing half of an old file and half of a new one.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from semcached.errors import ConfigError
from semcached.service.auth.scopes import ALL_SCOPES, NamespacePatterns, Scope
from semcached.service.auth.tenants import (
    DEFAULT_TENANT,
    LIMIT_FIELDS,
    Principal,
    Tenant,
    TenantLimits,
    laptop_principal,
)
from semcached.service.config import read_toml

__all__ = [
    "Mode",
    "TokenTable",
    "load_tokens_file",
    "new_token",
    "open_table",
    "single_token_table",
    "token_digest",
]

Mode = Literal["open", "single", "file"]

_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")  # also a metric label value
_TENANT_KEYS = frozenset({"namespaces", "kv_scope", *LIMIT_FIELDS})
_TOKEN_KEYS = frozenset({"sha256", "tenant", "scopes", "namespaces", "name"})


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def token_digest(token: str | bytes) -> bytes:
    """The SHA-256 digest a token is stored and looked up as."""
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


@dataclass(frozen=True, slots=True)
class TokenTable:
    """Principals by token digest, in one of three modes.

    ``open``: no token needed, every request acts as the default tenant; ``single``:
    one token (``server.auth_token``) with every scope; ``file``: the tokens file.
    """

    mode: Mode
    principals: Mapping[bytes, Principal] = field(default_factory=dict)
    tenants: Mapping[str, Tenant] = field(default_factory=dict)
    source: str = ""

    def lookup(self, token: bytes) -> Principal | None:
        """The principal of ``token``, or None.

        A dict lookup by digest, not a comparison of tokens: what its timing can reveal
        is at most where the *digest* of a guess lands in the table, which says nothing
        about a token (finding a token from its digest is a SHA-256 preimage), so the
        lookup is as safe as ``hmac.compare_digest`` over each entry and O(1).
        """
        return self.principals.get(token_digest(token))

    def describe(self) -> str:
        """The start-up line that says which mode is in force (never a token)."""
        if self.mode == "open":
            return (
                "authentication: none (no tokens file, no server.auth_token): every /v1 "
                "route is open"
            )
        if self.mode == "single":
            return (
                "authentication: one bearer token (server.auth_token) with every scope "
                "on every namespace"
            )
        return (
            f"authentication: tokens file {self.source}: {len(self.tenants)} tenants, "
            f"{len(self.principals)} tokens"
        )


def open_table() -> TokenTable:
    return TokenTable("open", tenants={DEFAULT_TENANT: laptop_principal().tenant})


def single_token_table(token: str) -> TokenTable:
    principal = laptop_principal()
    return TokenTable(
        "single", {token_digest(token): principal}, {DEFAULT_TENANT: principal.tenant}
    )


def load_tokens_file(path: Path, defaults: TenantLimits) -> TokenTable:
    """The table of a tokens file; :class:`ConfigError` naming the file and the key."""
    source = f"tokens file {path}"
    doc = read_toml(path, "tokens file")
    unknown = set(doc) - {"tenants", "tokens"}
    if unknown:
        raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r} (tenants, tokens)")
    tenants_doc = doc.get("tenants", {})
    if not isinstance(tenants_doc, dict):
        raise ConfigError(f"{source}: tenants: expected [tenants.<name>] tables")
    tenants = {
        name: _tenant(name, table, defaults, f"{source}: tenants.{name}")
        for name, table in tenants_doc.items()
    }
    tokens_doc = doc.get("tokens", [])
    if not isinstance(tokens_doc, list):
        raise ConfigError(f"{source}: tokens: expected [[tokens]] tables")
    principals: dict[bytes, Principal] = {}
    for i, table in enumerate(tokens_doc):
        where = f"{source}: tokens[{i}]"
        digest, principal = _token(table, tenants, where)
        if digest in principals:
            raise ConfigError(f"{where}: sha256: the same token is listed twice")
        principals[digest] = principal
    return TokenTable("file", principals, tenants, str(path))


def _tenant(name: str, table: Any, defaults: TenantLimits, where: str) -> Tenant:
    if not _TENANT_NAME.match(name):
        raise ConfigError(f"{where}: a tenant name is 1 to 64 of A-Z a-z 0-9 _ . : -")
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    _no_unknown(table, _TENANT_KEYS, where)
    if "namespaces" not in table:
        raise ConfigError(f"{where}: namespaces is required (use [] for a KV-only tenant)")
    kv_scope = table.get("kv_scope", name)
    if not isinstance(kv_scope, str) or len(kv_scope) > 128:
        raise ConfigError(f"{where}: kv_scope: expected a string of at most 128 characters")
    limits = {key: _limit(key, table[key], where) for key in LIMIT_FIELDS if key in table}
    return Tenant(
        name,
        _patterns(table["namespaces"], f"{where}: namespaces"),
        kv_scope,
        TenantLimits(**{**_as_dict(defaults), **limits}),
    )


def _token(table: Any, tenants: Mapping[str, Tenant], where: str) -> tuple[bytes, Principal]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    _no_unknown(table, _TOKEN_KEYS, where)
    digest = table.get("sha256")
    if not isinstance(digest, str) or not _HEX_DIGEST.match(digest):
        raise ConfigError(
            f"{where}: sha256: expected the token's SHA-256 as 64 lower-case hex digits "
            "(`semcached token hash`); tokens are never stored in the file"
        )
    name = table.get("tenant")
    tenant = tenants.get(name) if isinstance(name, str) else None
    if tenant is None:
        raise ConfigError(f"{where}: tenant: expected the name of a [tenants.<name>] table")
    scopes = table.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(s in ALL_SCOPES for s in scopes):
        allowed = ", ".join(s.value for s in Scope)
        raise ConfigError(f"{where}: scopes: expected a non-empty list of: {allowed}")
    namespaces = tenant.namespaces
    if "namespaces" in table:
        namespaces = _patterns(table["namespaces"], f"{where}: namespaces")
    label = table.get("name", tenant.name)
    if not isinstance(label, str) or not label or len(label) > 128:
        raise ConfigError(f"{where}: name: expected a string of 1 to 128 characters")
    principal = Principal(tenant, frozenset(Scope(s) for s in scopes), namespaces, label)
    return bytes.fromhex(digest), principal


def _patterns(raw: Any, where: str) -> NamespacePatterns:
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ConfigError(f"{where}: expected a list of namespaces, prefix* or *")
    try:
        return NamespacePatterns(tuple(raw))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _limit(key: str, raw: Any, where: str) -> float | int:
    if key == "requests_per_s":
        ok = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)
        if not ok or raw < 0:
            raise ConfigError(f"{where}: {key}: expected a finite number >= 0")
        return float(raw)
    minimum = 1 if key == "burst" else 0
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < minimum:
        raise ConfigError(f"{where}: {key}: expected an integer >= {minimum}")
    return raw


def _no_unknown(table: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")


def _as_dict(limits: TenantLimits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in LIMIT_FIELDS}
