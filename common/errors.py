"""The exception hierarchy shared by the daemon and the clients.

Everything semcached raises on purpose derives from :class:`SemcachedError`, so a
caller can catch one type. Transport failures also derive from the builtin
``ConnectionError`` / ``TimeoutError`` so that generic retry code recognises them.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "ConflictError",
    "InsufficientStorageError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "SemcachedConnectionError",
    "SemcachedError",
    "SemcachedTimeoutError",
    "ServerError",
    "ServiceUnavailableError",
    "TooManyRequestsError",
    "api_error_class",
]


class SemcachedError(Exception):
    """Root of every exception semcached raises deliberately."""


class ConfigError(SemcachedError):
    """The settings are invalid; the message names the key and where it came from."""


class SemcachedConnectionError(SemcachedError, ConnectionError):
    """The daemon could not be reached (refused, reset, DNS, TLS)."""


class SemcachedTimeoutError(SemcachedError, TimeoutError):
    """The daemon did not answer within the configured timeout."""


class ApiError(SemcachedError):
    """An error document ``{"error": {"code", "message", "field"?}}`` with an HTTP status.

    The daemon raises these to answer a request with an error; the clients raise
    them when the daemon answered with one. Each subclass carries its usual status.
    """

    status: int = 500

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.code = code
        self.message = message
        self.field = field
        # Response headers the daemon sends with the error (Retry-After, Connection).
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        where = f" (field {self.field!r})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"

    def to_json(self) -> dict[str, dict[str, str]]:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


class BadRequestError(ApiError):
    """A 4xx: the request was malformed or failed validation."""

    status = 400


class AuthenticationError(ApiError):
    """401: missing or wrong bearer token."""

    status = 401


class PermissionDeniedError(AuthenticationError):
    """403: the token is valid but does not grant this (a scope, a namespace)."""

    status = 403


class NotFoundError(ApiError):
    """404: no such route or entry."""

    status = 404


class ConflictError(ApiError):
    """409: the request conflicts with the current state."""

    status = 409


class PayloadTooLargeError(ApiError):
    """413: the body exceeded the daemon's configured limit."""

    status = 413


class TooManyRequestsError(ApiError):
    """429: over the caller's own limit (requests per second, leases); see Retry-After."""

    status = 429


class ServerError(ApiError):
    """A 5xx: the daemon failed on its own account."""

    status = 500


class ServiceUnavailableError(ServerError):
    """503: the daemon is starting, shutting down or overloaded; retry later."""

    status = 503


class InsufficientStorageError(ServerError):
    """507: the store is full and nothing could be evicted to make room (the map at its
    cap, or a full filesystem). Reads still work; retrying the same write will not."""

    status = 507


def api_error_class(status: int) -> type[ApiError]:
    """The exception class for an HTTP error status (used by the clients)."""
    specific: dict[int, type[ApiError]] = {
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        409: ConflictError,
        413: PayloadTooLargeError,
        429: TooManyRequestsError,
        503: ServiceUnavailableError,
        507: InsufficientStorageError,
    }
    if status in specific:
        return specific[status]
    return BadRequestError if status < 500 else ServerError
