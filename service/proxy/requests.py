"""The caching proxy's two operations (their keys and record shapes), and which of their
requests and answers it may cache: the rules of :mod:`semcached.protocol.chat_rules`
(shared with the in-process OpenAI wrapper) bounded by ``proxy.max_temperature`` and
``proxy.cache_tool_calls``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from semcached.protocol import chat_rules
from semcached.protocol.chat import ChatCacheKey, chat_cache_key, completion_cache_key
from semcached.protocol.chat_replay import (
    chunks_from_completion,
    chunks_from_text_completion,
    completion_from_chunks,
    text_completion_from_chunks,
)
from semcached.protocol.chat_rules import CachingRules
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


def _rules(settings: ProxySettings) -> CachingRules:
    return CachingRules(settings.max_temperature, settings.cache_tool_calls)


def bypass_reason(
    body: Mapping[str, Any], endpoint: Endpoint, settings: ProxySettings
) -> tuple[str | None, ChatCacheKey | None]:
    """(why the request may not be cached, or None; its key when it may)."""
    return chat_rules.bypass_reason(body, _rules(settings), endpoint.key)


def unstorable_reason(record: Mapping[str, Any], settings: ProxySettings) -> str | None:
    """Why an upstream answer must not be stored, or None."""
    return chat_rules.unstorable_reason(record, _rules(settings))
