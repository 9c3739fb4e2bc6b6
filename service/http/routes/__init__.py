"""The daemon's route groups, one module each; :data:`DEFAULT_GROUPS` is what serves."""

from __future__ import annotations

from semcached.service.http.routes import (
    admin,
    gptcache,
    health,
    kv,
    meta,
    proxy,
    qdrant,
    semantic,
    semantic_load,
)
from semcached.service.http.routing import RouteGroup

__all__ = ["DEFAULT_GROUPS"]

del semantic_load  # imported for its routes, which join the semantic group

DEFAULT_GROUPS: tuple[RouteGroup, ...] = (
    health.group,
    meta.group,
    admin.group,
    semantic.group,
    kv.group,
    proxy.group,  # after semantic: it uses that group's engine
    # Wire-compatible groups, off unless enabled; they use the semantic group's engine.
    gptcache.group,
    qdrant.group,
)
