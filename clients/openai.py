"""Deriving a cache key from an OpenAI-style chat completion request.

A cached answer may only be reused for a request that would produce the same kind
of answer: the same model, the same system prompt, the same tools and the same
output-shaping parameters. Those go into the *partition* (an exact hash: entries
never match across partitions); the last user message is the *text* that is
embedded and compared semantically. Earlier turns also go into the partition, so
a multi-turn conversation does not replay an answer given in another context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

__all__ = ["OUTPUT_PARAMS", "ChatCacheKey", "chat_cache_key"]

# Request parameters that change what a correct answer looks like.
OUTPUT_PARAMS = (
    "model",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "temperature",
    "top_p",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "logit_bias",
    "reasoning_effort",
)


@dataclass(frozen=True, slots=True)
class ChatCacheKey:
    text: str  # the last user message: what is compared semantically
    partition: str  # hex digest of everything that must match exactly


def _content_text(content: Any) -> str:
    """A message's text: a plain string, or the text parts of a multi-part content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def chat_cache_key(request: Mapping[str, Any]) -> ChatCacheKey:
    """Split a ``/v1/chat/completions`` request body into (text, partition).

    Raises ``ValueError`` when the request has no user message to key on.
    """
    messages = request.get("messages")
    if not isinstance(messages, Sequence) or not messages:
        raise ValueError("the request has no messages")
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"),
        default=None,
    )
    if last_user is None:
        raise ValueError("the request has no user message")
    context = {
        "params": {k: request[k] for k in OUTPUT_PARAMS if k in request},
        # Everything before the last user message: system prompt and earlier turns.
        "context": [
            {
                "role": m.get("role"),
                "content": _content_text(m.get("content")),
                "name": m.get("name"),
            }
            for m in messages[:last_user]
            if isinstance(m, Mapping)
        ],
    }
    digest = xxhash.xxh3_128_hexdigest(orjson.dumps(context, option=orjson.OPT_SORT_KEYS))
    return ChatCacheKey(_content_text(messages[last_user].get("content")), digest)
