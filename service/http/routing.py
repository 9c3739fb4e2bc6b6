"""Route groups: one module per group of routes, each carrying its own OpenAPI text.

A group declares its handlers with the OpenAPI operation beside them, so the
served document is generated from the same declarations that register the routes
and cannot drift from them. ``install`` adds the routes to an application and runs
the group's set-up hooks (components to open, metrics to define).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = [
    "ERROR_SCHEMA_REF",
    "Handler",
    "Operation",
    "RouteGroup",
    "json_content",
    "ref",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SetupHook = Callable[[web.Application], None]

ERROR_SCHEMA_REF = "#/components/schemas/Error"


def ref(schema_name: str) -> dict[str, str]:
    """A JSON reference to a component schema."""
    return {"$ref": f"#/components/schemas/{schema_name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An OpenAPI response (or request body) carrying JSON of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@dataclass(frozen=True, slots=True)
class Operation:
    """One route and its OpenAPI operation object."""

    method: str
    path: str
    handler: Handler
    spec: dict[str, Any]


@dataclass
class RouteGroup:
    """A named set of routes plus the hooks that prepare their shared state."""

    name: str
    description: str
    operations: list[Operation] = field(default_factory=list)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    _setup_hooks: list[SetupHook] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        responses: dict[int | str, dict[str, Any]],
        description: str = "",
        request_body: dict[str, Any] | None = None,
        parameters: list[dict[str, Any]] | None = None,
        operation_id: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler`` for ``method path`` with its OpenAPI text."""

        def register(handler: Handler) -> Handler:
            spec: dict[str, Any] = {
                "tags": [self.name],
                "summary": summary,
                "operationId": operation_id or handler.__name__,
                "responses": {str(code): resp for code, resp in responses.items()},
            }
            if description:
                spec["description"] = description
            if request_body is not None:
                spec["requestBody"] = request_body
            if parameters:
                spec["parameters"] = parameters
            self.operations.append(Operation(method.upper(), path, handler, spec))
            return handler

        return register

    def schema(self, name: str, schema: dict[str, Any]) -> dict[str, str]:
        """Register a component schema; returns a reference to it."""
        self.schemas[name] = schema
        return ref(name)

    def on_setup(self, hook: SetupHook) -> SetupHook:
        """Run ``hook(app)`` when the group is installed (register components, metrics)."""
        self._setup_hooks.append(hook)
        return hook

    def install(self, app: web.Application) -> None:
        for hook in self._setup_hooks:
            hook(app)
        for op in self.operations:
            app.router.add_route(op.method, op.path, op.handler)
