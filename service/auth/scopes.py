"""What a token may do (scopes) and which semantic namespaces it may name (patterns)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from semcached.protocol.semantic import NAME_PATTERN

__all__ = ["ALL_SCOPES", "NamespacePatterns", "Scope"]


class Scope(StrEnum):
    """A right a token grants; a route needs exactly one."""

    SEMANTIC_READ = "semantic:read"  # lookups, reading an entry
    SEMANTIC_WRITE = "semantic:write"  # inserts, deletes, purges
    KV_READ = "kv:read"  # chunk reads, plans, leases, the model list
    KV_WRITE = "kv:write"  # chunk puts and deletes
    ADMIN = "admin"  # settings, log level, the caches' global statistics


ALL_SCOPES = frozenset(Scope)

_NAME = re.compile(NAME_PATTERN)
_PREFIX = re.compile(NAME_PATTERN.replace("{1,128}", "{0,127}"))


@dataclass(frozen=True, slots=True)
class NamespacePatterns:
    """Namespaces as exact names, ``prefix*`` or ``*`` (every namespace).

    Deliberately not fnmatch: ``[`` and ``?`` would make a tenant's reach hard to
    read from its file, and ``*`` cannot occur in a namespace, so a pattern is never
    mistaken for a name.
    """

    patterns: tuple[str, ...]

    def __post_init__(self) -> None:
        for pattern in self.patterns:
            if not (
                _NAME.match(pattern) or (pattern.endswith("*") and _PREFIX.match(pattern[:-1]))
            ):
                raise ValueError(
                    f"namespace pattern {pattern!r}: expected a namespace, prefix* or *"
                )

    @property
    def everything(self) -> bool:
        return "*" in self.patterns

    def matches(self, namespace: str) -> bool:
        for pattern in self.patterns:
            if pattern.endswith("*"):
                if namespace.startswith(pattern[:-1]):
                    return True
            elif namespace == pattern:
                return True
        return False
