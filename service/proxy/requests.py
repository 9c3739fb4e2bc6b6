"""Which requests and answers the caching proxy may cache, and with which key.

An answer is reused only where the caller would have got an equivalent one: a single
choice (``n`` 1), a temperature within ``proxy.max_temperature``, no log
probabilities (a replay has none), a user message or a single prompt to key on. An
answer is stored only if it is complete (it has its finish reason) and, unless
``proxy.cache_tool_calls``, talks rather than calls tools.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from semcached.protocol.chat import ChatCacheKey, chat_cache_key, completion_cache_key
from semcached.protocol.chat_replay import (
    chunks_from_completion,
    chunks_from_text_completion,
    completion_from_chunks,
    is_complete,
    is_tool_call,
    text_completion_from_chunks,
)
from semcached.service.config import ProxySettings

__all__ = ["CHAT", "COMPLETIONS", "Endpoint", "bypass_reason", "unstorable_reason"]

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One proxied operation: its upstream path, its key and its record's shape."""

    path: str
    key: Callable[[Mapping[str, Any]], ChatCacheKey]
    from_chunks: Callable[[Iterable[Mapping[str, Any]]], Record]
    to_chunks: Callable[..., list[Record]]
    id_prefix: str


CHAT = Endpoint(
    "/chat/completions", chat_cache_key, completion_from_chunks, chunks_from_completion, "chatcmpl-"
)
COMPLETIONS = Endpoint(
    "/completions",
    completion_cache_key,
    text_completion_from_chunks,
    chunks_from_text_completion,
    "cmpl-",
)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def bypass_reason(
    body: Mapping[str, Any], endpoint: Endpoint, settings: ProxySettings
) -> tuple[str | None, ChatCacheKey | None]:
    """(why the request may not be cached, or None; its key when it may)."""
    for name in ("n", "best_of"):
        if name in body and body[name] is not None and body[name] != 1:
            return "n", None
    temperature = _number(body.get("temperature"))
    if temperature is not None and temperature > settings.max_temperature:
        return "temperature", None
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        return "logprobs", None
    try:
        key = endpoint.key(body)
    except ValueError:
        return "no_prompt", None
    return None, key


def unstorable_reason(record: Mapping[str, Any], settings: ProxySettings) -> str | None:
    """Why an upstream answer must not be stored, or None."""
    if not is_complete(record):
        return "truncated"
    if is_tool_call(record) and not settings.cache_tool_calls:
        return "tool_call"
    return None
