"""The OpenAPI 3.1 document of the daemon, assembled from the installed route groups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from semcached._version import __version__
from semcached.service.http.routing import ERROR_SCHEMA_REF, RouteGroup, json_content

__all__ = ["ERROR_SCHEMA", "build_openapi"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable code."},
                "message": {"type": "string", "description": "What went wrong, for people."},
                "field": {"type": "string", "description": "The request field at fault."},
            },
        }
    },
}

_ERROR_RESPONSES = {
    "4XX": json_content({"$ref": ERROR_SCHEMA_REF}, "The request was rejected."),
    "5XX": json_content({"$ref": ERROR_SCHEMA_REF}, "The daemon failed."),
}


def build_openapi(groups: Iterable[RouteGroup], *, bearer_auth: bool) -> dict[str, Any]:
    """One document describing every operation of ``groups``.

    Every operation also documents the shared error responses; with
    ``bearer_auth`` the ``/v1/`` operations (except this document) require a token.
    """
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    tags = []
    for group in groups:
        tags.append({"name": group.name, "description": group.description})
        schemas.update(group.schemas)
        for op in group.operations:
            spec = dict(op.spec)
            spec["responses"] = {**_ERROR_RESPONSES, **spec["responses"]}
            if bearer_auth and op.path.startswith("/v1/") and op.path != "/v1/openapi.json":
                spec["security"] = [{"bearer": []}]
            paths.setdefault(op.path, {})[op.method.lower()] = spec
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "semcached",
            "version": __version__,
            "description": "Semantic response cache and RAG chunk KV cache for LLM serving.",
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    return doc
