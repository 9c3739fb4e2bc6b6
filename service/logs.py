"""Process logging: plain text or JSON lines on stderr, and the HTTP access log."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from semcached.service.config import LogSettings

__all__ = [
    "AccessLogger",
    "JsonFormatter",
    "PlainFormatter",
    "access_logger",
    "configure_logging",
    "set_level",
]

ACCESS_LOGGER = "semcached.access"

# Attributes every LogRecord has; anything else was passed with ``extra=`` and
# belongs in the structured output.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class PlainFormatter(logging.Formatter):
    """``time level logger: message key=value…`` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure_logging(settings: LogSettings) -> None:
    """Send every log record to stderr in the configured format, at the configured level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(settings.level)


def set_level(level: str) -> None:
    """Change the level of the semcached loggers at run time."""
    logging.getLogger("semcached").setLevel(level.upper())
    # Libraries stay at warning unless we debug.
    logging.getLogger().setLevel("DEBUG" if level == "debug" else "WARNING")


class AccessLogger(AbstractAccessLogger):
    """One record per request with method, path, status, size and duration as fields."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_s: float) -> None:
        self.logger.info(
            "%s %s %d",
            request.method,
            request.path,
            response.status,
            extra={
                "remote": request.remote,
                "status": response.status,
                "bytes": response.body_length,
                "duration_ms": round(time_s * 1000, 3),
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def access_logger() -> logging.Logger:
    return logging.getLogger(ACCESS_LOGGER)
