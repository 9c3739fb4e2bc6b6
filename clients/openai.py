"""The chat-request cache key, for the clients' users (it lives in the protocol).

:mod:`semcached.protocol.chat` holds it now, because the daemon's caching proxy keys
with the same function; this module keeps the name that gateways import.
"""

from __future__ import annotations

from semcached.protocol.chat import (
    OUTPUT_PARAMS,
    ChatCacheKey,
    chat_cache_key,
    completion_cache_key,
)

__all__ = ["OUTPUT_PARAMS", "ChatCacheKey", "chat_cache_key", "completion_cache_key"]
