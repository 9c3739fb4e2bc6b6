"""Route groups: one module per group of routes, each declaring its operations' types.

A group declares each handler with what it takes and answers: the request body's
struct (or its :class:`~semcached.service.http.decoding.Decoder`), the query
string's struct, and a :class:`Reply` per status with the response's struct. The
served OpenAPI document is generated from these declarations
(:func:`~semcached.service.http.openapi.build_openapi` turns every struct into a
component schema), so it cannot drift from the routes or from what is validated.
``install`` adds the routes to an application and runs the group's set-up hooks
(components to open, metrics to define); document hooks add the bounds that are
settings to the generated schemas.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from semcached.protocol.headers import JSON
from semcached.service.auth.scopes import Scope
from semcached.service.config import Settings
from semcached.service.http.decoding import Decoder

__all__ = [
    "ERROR_SCHEMA_REF",
    "STORE_FULL_REPLY",
    "EnabledWhen",
    "Handler",
    "Operation",
    "Reply",
    "RouteGroup",
    "error_reply",
    "json_content",
    "ref",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SetupHook = Callable[[web.Application], None]
EnabledWhen = Callable[[Settings], bool]
DocumentHook = Callable[[dict[str, Any], Settings], None]

ERROR_SCHEMA_REF = "#/components/schemas/Error"


def ref(schema_name: str) -> dict[str, str]:
    """A JSON reference to a component schema."""
    return {"$ref": f"#/components/schemas/{schema_name}"}


def json_content(schema: Any, description: str) -> dict[str, Any]:
    """An OpenAPI response (or request body) carrying JSON of ``schema``.

    ``schema`` is a JSON Schema, or a type (a struct, an annotated alias) that the
    document builder turns into one.
    """
    return {"description": description, "content": {JSON: {"schema": schema}}}


STORE_FULL_REPLY = json_content(
    {"$ref": ERROR_SCHEMA_REF},
    "The store is full and nothing could be evicted to make room (code store_full: "
    "the size cap, or a full filesystem); reads still work.",
)
"""The 507 of a route that writes to a store."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A documented response: a description and the body's type (None: no body)."""

    description: str
    body: Any = None
    content_type: str = JSON
    links: Mapping[str, Any] | None = None
    """OpenAPI links: the operations the answer's values feed (stateful clients follow them)."""

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"description": self.description}
        if self.body is not None:
            spec["content"] = {self.content_type: {"schema": self.body}}
        if self.links:
            spec["links"] = dict(self.links)
        return spec


@dataclass(frozen=True, slots=True)
class Operation:
    """One route and its OpenAPI operation object.

    ``spec`` may hold types where schemas go, and ``query`` the struct whose fields
    are the query parameters: the document builder resolves both.
    """

    method: str
    path: str
    handler: Handler
    spec: dict[str, Any]
    query: type | None = None
    scope: Scope | None = None  # what a token needs for it (None: open to anyone)


def error_reply(description: str) -> Reply:
    """A documented error response: the ``{"error": {...}}`` document."""
    return Reply(description, {"$ref": ERROR_SCHEMA_REF})


def _always(settings: Settings) -> bool:
    return True


def _type_of(decl: Decoder[Any] | type) -> type:
    return decl.type if isinstance(decl, Decoder) else decl


@dataclass
class RouteGroup:
    """A named set of routes plus the hooks that prepare their shared state.

    ``enabled`` says from the settings whether the group serves at all: an optional
    mode (the caching proxy, the GPTCache wire routes) is off unless configured, and
    a group that is off has no routes, no set-up and no place in the OpenAPI document.
    """

    name: str
    description: str
    enabled: EnabledWhen = _always
    responses: Mapping[int | str, Reply | dict[str, Any]] = field(default_factory=dict)
    """Responses every operation of the group may give (a route's own take precedence)."""
    operations: list[Operation] = field(default_factory=list)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    document_hooks: list[DocumentHook] = field(default_factory=list)
    _setup_hooks: list[SetupHook] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        responses: Mapping[int | str, Reply | dict[str, Any]],
        description: str = "",
        body: Decoder[Any] | type | None = None,
        body_description: str = "",
        request_body: dict[str, Any] | None = None,
        query: Decoder[Any] | type | None = None,
        parameters: list[dict[str, Any]] | None = None,
        operation_id: str | None = None,
        scope: Scope | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler`` for ``method path`` with its OpenAPI text.

        ``body``: the JSON request body's struct (required); ``request_body``: any
        other body, as an OpenAPI request body object. ``query``: the struct of the
        query string. ``parameters``: the path's (their schemas may be types).
        ``scope``: what the caller's token must grant (checked before the handler
        runs, so before any body is read); every ``/v1/`` route but the OpenAPI
        document names one.
        """
        if body is not None and request_body is not None:
            raise ValueError("give body or request_body, not both")

        declared: dict[int | str, Reply | dict[str, Any]] = {**self.responses, **responses}

        def register(handler: Handler) -> Handler:
            spec: dict[str, Any] = {
                "tags": [self.name],
                "summary": summary,
                "operationId": operation_id or handler.__name__,
                "responses": {
                    str(code): resp.spec() if isinstance(resp, Reply) else resp
                    for code, resp in declared.items()
                },
            }
            if description:
                spec["description"] = description
            if body is not None:
                content = json_content(_type_of(body), body_description or summary)
                spec["requestBody"] = {**content, "required": True}
            elif request_body is not None:
                spec["requestBody"] = request_body
            if parameters:
                spec["parameters"] = parameters
            query_type = None if query is None else _type_of(query)
            self.operations.append(
                Operation(method.upper(), path, handler, spec, query_type, scope)
            )
            return handler

        return register

    def schema(self, name: str, schema: dict[str, Any]) -> dict[str, str]:
        """Register a hand-written component schema; returns a reference to it."""
        self.schemas[name] = schema
        return ref(name)

    def on_setup(self, hook: SetupHook) -> SetupHook:
        """Run ``hook(app)`` when the group is installed (register components, metrics)."""
        self._setup_hooks.append(hook)
        return hook

    def on_document(self, hook: DocumentHook) -> DocumentHook:
        """Run ``hook(schemas, settings)`` on the generated component schemas, to add
        the bounds that are settings (``maxItems`` of a batch) where they apply."""
        self.document_hooks.append(hook)
        return hook

    def install(self, app: web.Application) -> None:
        for hook in self._setup_hooks:
            hook(app)
        for op in self.operations:
            app.router.add_route(op.method, op.path, op.handler)
