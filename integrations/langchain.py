"""A LangChain LLM cache backed by semcached: ``set_llm_cache(SemcachedCache(...))``.

LangChain asks a cache for ``(prompt, llm_string)``: the prompt text of an LLM, or the
serialized message list of a chat model, and the model's configuration (name,
temperature, stop words…). The configuration goes into the *partition* (hashed), so
answers never cross models or parameters. Of a chat prompt, the last human message is
the text compared (semantically by default: the daemon embeds it, and a paraphrase
hits), and the messages around it go into the partition with the configuration, so a
conversation never replays an answer given in another one. ``mode="exact"`` serves
only the daemon's exact tier (the same normalised text in the same partition).

Generations are stored as JSON: a chat generation as its message
(``message_to_dict``), so a chat model gets back an ``AIMessage`` with its tool calls
and metadata; a text generation as its text. Every call goes through the fail-open
layer (:mod:`semcached.clients.failopen`): a lookup that takes longer than its budget
or fails is a miss, stores are queued and never block the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import xxhash
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.messages import messages_from_dict
from langchain_core.messages.base import message_to_dict
from langchain_core.outputs import ChatGeneration, Generation

from semcached.clients import AsyncSemcachedClient, FailOpenPolicy, FailOpenStats, SemcachedClient
from semcached.integrations.session import CacheMode, CacheSession

__all__ = ["CacheMode", "SemcachedCache", "cache_key", "decode_generations", "encode_generations"]

_FORMAT = "langchain-generations/1"


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, Mapping) else str(part)
            for part in content
            if isinstance(part, str) or (isinstance(part, Mapping) and "text" in part)
        )
    return ""


def _chat_messages(prompt: str) -> list[tuple[str, str]] | None:
    """(type, text) of each message if ``prompt`` is a chat model's serialized message
    list (langchain's ``dumps`` format), else None. Parsed as plain JSON: nothing is
    instantiated from what the prompt says."""
    if not prompt.startswith("["):
        return None
    try:
        items = orjson.loads(prompt)
    except orjson.JSONDecodeError:
        return None
    messages: list[tuple[str, str]] = []
    for item in items if isinstance(items, list) else ():
        kwargs = item.get("kwargs") if isinstance(item, Mapping) else None
        if not isinstance(kwargs, Mapping) or item.get("lc") != 1:
            return None
        kind = kwargs.get("type") or str(item.get("id", ["?"])[-1])
        messages.append((str(kind), _content_text(kwargs.get("content"))))
    return messages or None


def cache_key(prompt: str, llm_string: str) -> tuple[str, str]:
    """(text compared, partition) for a LangChain ``(prompt, llm_string)``."""
    messages = _chat_messages(prompt)
    human = None
    if messages is not None:
        human = max(
            (i for i, (kind, text) in enumerate(messages) if kind == "human" and text.strip()),
            default=None,
        )
    if messages is None or human is None:
        text, context = prompt, None
    else:
        text = messages[human][1]
        context = [list(m) for i, m in enumerate(messages) if i != human] + [human]
    partition = xxhash.xxh3_128_hexdigest(
        orjson.dumps({"llm": llm_string, "context": context}, option=orjson.OPT_SORT_KEYS)
    )
    return text, partition


def encode_generations(generations: Sequence[Generation]) -> dict[str, Any]:
    """The JSON stored for a list of generations."""
    encoded: list[dict[str, Any]] = []
    for generation in generations:
        item: dict[str, Any] = {"info": generation.generation_info}
        if isinstance(generation, ChatGeneration):
            item["message"] = message_to_dict(generation.message)
        else:
            item["text"] = generation.text
        encoded.append(item)
    return {"format": _FORMAT, "generations": encoded}


def decode_generations(value: Any) -> list[Generation] | None:
    """Generations back from what :func:`encode_generations` stored (None if it is not)."""
    if not isinstance(value, Mapping) or value.get("format") != _FORMAT:
        return None
    generations: list[Generation] = []
    for item in value["generations"]:
        info = item.get("info")
        if "message" in item:
            message = messages_from_dict([item["message"]])[0]
            generations.append(ChatGeneration(message=message, generation_info=info))
        else:
            generations.append(Generation(text=item["text"], generation_info=info))
    return generations


class SemcachedCache(BaseCache):
    """LangChain's ``BaseCache`` on a semcached daemon (see the module docstring).

    ``client``: a :class:`SemcachedClient` or the daemon's URL; ``async_client`` serves
    ``alookup``/``aupdate``/``aclear`` (by default one to the same daemon, made on first
    use). Clients made here are closed by :meth:`close` / :meth:`aclose`. ``category``
    and ``ttl_s`` go with every entry (None: the daemon classifies / the category's
    TTL); ``policy``: the fail-open budget, breaker and store queue.
    """

    def __init__(
        self,
        client: SemcachedClient | str = "http://127.0.0.1:8080",
        *,
        async_client: AsyncSemcachedClient | None = None,
        namespace: str = "langchain",
        mode: CacheMode = "semantic",
        category: str | None = None,
        ttl_s: float | None = None,
        policy: FailOpenPolicy | None = None,
        token: str | None = None,
    ) -> None:
        self.session = CacheSession(
            client,
            async_client=async_client,
            namespace=namespace,
            mode=mode,
            category=category,
            policy=policy,
            token=token,
        )
        self.ttl_s = ttl_s
        self.sync = self.session.sync  # the fail-open clients: stats, flush
        self.aio = self.session.aio

    @property
    def stats(self) -> FailOpenStats:
        """The sync path's counters (``self.aio.stats``: the async path's)."""
        return self.sync.stats

    # -- sync --------------------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        found = self.session.get(*cache_key(prompt, llm_string))
        return None if found is None else decode_generations(found)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        text, partition = cache_key(prompt, llm_string)
        response = encode_generations(return_val)
        self.session.put(text, response, partition=partition, ttl_s=self.ttl_s)

    def clear(self, **kwargs: Any) -> None:
        """Remove this namespace's entries (``partition=`` or ``category=`` narrow it),
        after the stores still queued."""
        self.session.purge(**kwargs)

    def close(self) -> None:
        """Send the queued stores, stop the workers, close the clients made here."""
        self.session.close()

    # -- async -------------------------------------------------------------------------

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        found = await self.session.aget(*cache_key(prompt, llm_string))
        return None if found is None else decode_generations(found)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        text, partition = cache_key(prompt, llm_string)
        response = encode_generations(return_val)
        self.session.aput(text, response, partition=partition, ttl_s=self.ttl_s)

    async def aclear(self, **kwargs: Any) -> None:
        await self.session.apurge(**kwargs)

    async def aclose(self) -> None:
        """:meth:`close` for the async path."""
        await self.session.aclose()
