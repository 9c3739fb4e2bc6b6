"""Which chat requests and answers a cache may reuse: one rule set for every cache in front
of an OpenAI-compatible API (the daemon's caching proxy, the in-process SDK wrapper).

An answer is reused only where the caller would have got an equivalent one: a single
choice (``n`` and ``best_of`` 1), a temperature within the configured bound (above it,
answers vary by design), no log probabilities (a replay has none), and a user message
or a prompt to key on. An answer is stored only if it is complete (every choice has
its finish reason: a stream cut short is truncated) and, unless tool calls are
cacheable, talks rather than calls tools.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from semcached.protocol.chat import ChatCacheKey, chat_cache_key
from semcached.protocol.chat_replay import is_complete, is_tool_call

__all__ = ["CachingRules", "bypass_reason", "unstorable_reason"]


@dataclass(frozen=True, slots=True)
class CachingRules:
    """The bounds a deployment chooses (``[proxy]`` settings, the wrapper's arguments)."""

    max_temperature: float = 1.0
    cache_tool_calls: bool = False


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def bypass_reason(
    body: Mapping[str, Any],
    rules: CachingRules,
    key: Callable[[Mapping[str, Any]], ChatCacheKey] = chat_cache_key,
) -> tuple[str | None, ChatCacheKey | None]:
    """``(why the request may not be cached, None)`` or ``(None, its key)``.

    The reasons are metric labels: ``n``, ``temperature``, ``logprobs``, ``no_prompt``.
    """
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            return "n", None
    temperature = _number(body.get("temperature"))
    if temperature is not None and temperature > rules.max_temperature:
        return "temperature", None
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        return "logprobs", None
    try:
        return None, key(body)
    except ValueError:
        return "no_prompt", None


def unstorable_reason(record: Mapping[str, Any], rules: CachingRules) -> str | None:
    """Why an answer must not be stored (``truncated``, ``tool_call``), or None."""
    if not is_complete(record):
        return "truncated"
    if is_tool_call(record) and not rules.cache_tool_calls:
        return "tool_call"
    return None
