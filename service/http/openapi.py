"""The OpenAPI 3.1 document of the daemon, assembled from the installed route groups.

Route declarations name types (msgspec structs, annotated aliases) where schemas go;
:func:`build_openapi` turns them all into JSON Schema in one
``msgspec.json.schema_components`` call, so each struct becomes one component under
``#/components/schemas/{name}`` with its constraints (patterns, lengths, ranges,
enums), and a query struct's fields become the operation's query parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from semcached._version import __version__
from semcached.protocol.headers import JSON
from semcached.service.config import Settings
from semcached.service.http.routing import (
    ERROR_SCHEMA_REF,
    Operation,
    RouteGroup,
    error_reply,
    json_content,
)

__all__ = ["ERROR_SCHEMA", "build_openapi"]

REF_TEMPLATE = "#/components/schemas/{name}"

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


def _standard_responses(op: Operation) -> dict[str, Any]:
    """The error statuses an operation can give whatever its handler does.

    Every operation: 500 (the daemon's fault) and 503 (starting, overloaded, or
    shutting down). With a body, query or path parameters: 400. With a body: 413 and
    408 (``server.body_timeout_s``); with a JSON body also 415. (Behind a token, 401,
    403 and 429 too: ``_AUTH_RESPONSES``.)
    """
    out = {
        500: error_reply("The daemon failed; see its log."),
        503: error_reply(
            "Not ready yet, overloaded, or shutting down (then with Connection: close): "
            "retry, elsewhere if need be."
        ),
    }
    spec = op.spec
    body = spec.get("requestBody")
    if body is not None or op.query is not None or spec.get("parameters"):
        out[400] = error_reply("The request is invalid; `field` names the culprit.")
    if body is not None:
        out[408] = error_reply("The body stalled longer than server.body_timeout_s.")
        out[413] = error_reply("The body is larger than the route accepts.")
        if JSON in body.get("content", {}):
            out[415] = error_reply("The body is not declared as JSON.")
    return {str(code): reply.spec() for code, reply in sorted(out.items())}


# What a protected operation may also answer when tokens are required.
_AUTH_RESPONSES = {
    "401": {
        **json_content({"$ref": ERROR_SCHEMA_REF}, "No valid bearer token."),
        "headers": {
            "WWW-Authenticate": {
                "description": 'Bearer realm="semcached", with error="invalid_token" '
                "when a token was sent.",
                "schema": {"type": "string"},
            }
        },
    },
    "403": json_content(
        {"$ref": ERROR_SCHEMA_REF},
        "The token lacks the route's scope (insufficient_scope) or a namespace the "
        "request names (namespace_forbidden).",
    ),
    "429": {
        **json_content({"$ref": ERROR_SCHEMA_REF}, "The tenant is over its requests per second."),
        "headers": {
            "Retry-After": {
                "description": "Seconds until a request would be admitted.",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
}

_JSON_LEAVES = (str, int, float, bool, type(None))


def _collect(node: Any, found: list[Any]) -> None:
    """Every type in ``node`` (a spec with types where schemas go), in order."""
    if isinstance(node, dict):
        for value in node.values():
            _collect(value, found)
    elif isinstance(node, list):
        for value in node:
            _collect(value, found)
    elif not isinstance(node, _JSON_LEAVES) and not any(node is t for t in found):
        found.append(node)


def _resolve(node: Any, types: list[Any], schemas: tuple[dict[str, Any], ...]) -> Any:
    if isinstance(node, dict):
        return {key: _resolve(value, types, schemas) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, types, schemas) for value in node]
    if isinstance(node, _JSON_LEAVES):
        return node
    return schemas[next(i for i, t in enumerate(types) if t is node)]


def query_parameters(struct: type) -> list[dict[str, Any]]:
    """One ``in: query`` parameter per field of ``struct``."""
    _, components = msgspec.json.schema_components([struct], ref_template=REF_TEMPLATE)
    schema = components[struct.__name__]
    required = set(schema.get("required", ()))
    parameters = []
    for name, field_schema in schema["properties"].items():
        prop = dict(field_schema)
        options = [o for o in prop.pop("anyOf", ()) if o != {"type": "null"}]
        if options:  # a query string has no null: document the value's own schema
            prop.pop("default", None)
            prop = {**prop, **options[0]} if len(options) == 1 else {**prop, "anyOf": options}
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            param["description"] = prop.pop("description")
        param["schema"] = prop
        parameters.append(param)
    return parameters


def build_openapi(
    groups: Iterable[RouteGroup], *, bearer_auth: bool, settings: Settings | None = None
) -> dict[str, Any]:
    """One document describing every operation of ``groups``.

    Every operation also documents the error statuses it can give whatever its
    handler does (see :func:`_standard_responses`) and the scope a token needs for it
    (``x-semcached-scope``); with ``bearer_auth`` the ``/v1/`` operations (except this
    document) and every operation that names a scope (the wire-compatible routes outside
    ``/v1/``) require a token, as a bearer token or in Qdrant's ``api-key`` header, and
    document its 401, 403 and 429.
    With ``settings``, a group that is off (:attr:`RouteGroup.enabled`) is left out
    and each group's document hooks add the bounds that are settings (batch sizes,
    the vector dimension) to the generated schemas.
    """
    groups = [group for group in groups if settings is None or group.enabled(settings)]
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    tags = []
    for group in groups:
        tags.append({"name": group.name, "description": group.description})
        schemas.update(group.schemas)
        for op in group.operations:
            spec = dict(op.spec)
            protected = bearer_auth and (
                op.scope is not None
                or (op.path.startswith("/v1/") and op.path != "/v1/openapi.json")
            )
            standard = _standard_responses(op)
            if protected:
                standard.update(_AUTH_RESPONSES)
            spec["responses"] = dict(sorted({**standard, **spec["responses"]}.items()))
            if op.query is not None:
                spec["parameters"] = [*spec.get("parameters", ()), *query_parameters(op.query)]
            if op.scope is not None:
                spec["x-semcached-scope"] = op.scope.value
            if protected:
                spec["security"] = [{"bearer": []}, {"apiKey": []}]
            paths.setdefault(op.path, {})[op.method.lower()] = spec
    types: list[Any] = []
    _collect(paths, types)
    generated, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    schemas.update(components)
    if settings is not None:
        for group in groups:
            for hook in group.document_hooks:
                hook(schemas, settings)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "semcached",
            "version": __version__,
            "description": "Semantic response cache and RAG chunk KV cache for LLM serving.",
        },
        "tags": tags,
        "paths": _resolve(paths, types, generated),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                # Qdrant's header, for its clients; the same tokens.
                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"},
            },
        },
    }
    return doc
