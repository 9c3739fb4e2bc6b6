"""Deriving a cache key from an OpenAI-style chat or text completion request.

A cached answer may only be reused for a request that would produce the same kind
of answer: the same model, the same system prompt, the same tools and the same
output-shaping parameters. Those go into the *partition* (an exact hash: entries
never match across partitions); the last user message is the *text* that is
embedded and compared semantically. Earlier turns also go into the partition, so
a multi-turn conversation does not replay an answer given in another context.

The daemon's caching proxy and the clients' helpers key with these same functions,
which is why they live in the protocol: both sides must agree on the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

__all__ = [
    "COMPLETION_OUTPUT_PARAMS",
    "OUTPUT_PARAMS",
    "ChatCacheKey",
    "chat_cache_key",
    "completion_cache_key",
]

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
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "parallel_tool_calls",
)

# The same for ``/v1/completions``: its answer also depends on the suffix, echo and
# logprobs, and it has no tools.
COMPLETION_OUTPUT_PARAMS = (
    "model",
    "suffix",
    "echo",
    "logprobs",
    "best_of",
    "temperature",
    "top_p",
    "seed",
    "max_tokens",
    "stop",
    "n",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
)


@dataclass(frozen=True, slots=True)
class ChatCacheKey:
    text: str  # the last user message (or the prompt): what is compared semantically
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


def _digest(context: Mapping[str, Any]) -> str:
    return xxhash.xxh3_128_hexdigest(orjson.dumps(context, option=orjson.OPT_SORT_KEYS))


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
    return ChatCacheKey(_content_text(messages[last_user].get("content")), _digest(context))


def completion_cache_key(request: Mapping[str, Any]) -> ChatCacheKey:
    """Split a ``/v1/completions`` request body into (prompt text, partition).

    Only a single string prompt is keyed (a list of prompts, or token ids, asks for
    several answers at once); raises ``ValueError`` otherwise. The endpoint tag keeps
    a text completion from ever matching a chat answer of the same model.
    """
    prompt = request.get("prompt")
    if isinstance(prompt, Sequence) and not isinstance(prompt, str) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("the request has no single text prompt")
    context = {
        "endpoint": "completions",
        "params": {k: request[k] for k in COMPLETION_OUTPUT_PARAMS if k in request},
    }
    return ChatCacheKey(prompt, _digest(context))
