"""Recording and replaying OpenAI answers: streamed chunks <-> one completion document.

The cached *record* of an answer is the document a non-streamed call returns (a
``chat.completion``, or a ``text_completion`` for ``/v1/completions``), as a dict.
A streamed answer is assembled into that document while it passes; a hit is answered
with the document itself, or replayed from it as a well-formed chunk sequence, so a
stream can be served from a non-streamed call's record and the other way round.

Pure functions, no I/O: the daemon's caching proxy and the in-process OpenAI SDK
wrapper share them. A record without a finish reason is *truncated* (the stream was
cut before its end) and must never be stored: :func:`is_complete` says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "PIECE_CHARS",
    "chunks_from_completion",
    "chunks_from_text_completion",
    "completion_from_chunks",
    "completion_text",
    "is_complete",
    "is_tool_call",
    "split_text",
    "text_completion_from_chunks",
]

PIECE_CHARS = 48
"""About how many characters a replayed content delta carries (whole words)."""

_WORD = re.compile(r"\s*\S+\s*|\s+")
_TOOL_FINISH = frozenset({"tool_calls", "function_call"})
# Fields of a chunk that are copied once to the document (the first value wins).
_HEAD_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")


def split_text(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """``text`` in pieces of about ``piece_chars`` characters, cut between words.

    The pieces concatenate to ``text`` exactly; a word longer than a piece is cut.
    """
    pieces: list[str] = []
    current = ""
    for match in _WORD.finditer(text):
        word = match.group()
        if current and len(current) + len(word) > piece_chars:
            pieces.append(current)
            current = ""
        while len(word) > piece_chars:
            pieces.append(word[:piece_chars])
            word = word[piece_chars:]
        current += word
    if current:
        pieces.append(current)
    return pieces


def _head(chunks: list[Mapping[str, Any]], obj: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"object": obj}
    for name in _HEAD_FIELDS:
        value = next((c[name] for c in chunks if c.get(name) is not None), None)
        if value is not None:
            doc[name] = value
    doc.setdefault("id", "")
    doc.setdefault("created", 0)
    doc.setdefault("model", "")
    return doc


def _usage(chunks: list[Mapping[str, Any]]) -> Any:
    # The usage chunk is the last one carrying a usage (earlier ones carry null).
    return next((c["usage"] for c in reversed(chunks) if c.get("usage") is not None), None)


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: Mapping[str, Any]) -> None:
    index = int(delta.get("index", len(calls)))
    call = calls.setdefault(index, {"id": "", "type": "function", "function": {}})
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    _merge_function(call["function"], delta.get("function"))


def _merge_function(function: dict[str, Any], delta: Any) -> None:
    # The name comes whole in the first delta, the arguments in pieces; concatenating
    # both is right either way.
    if isinstance(delta, Mapping):
        for key in ("name", "arguments"):
            if delta.get(key) is not None:
                function[key] = function.get(key, "") + str(delta[key])


class _ChoiceAcc:
    """What the deltas of one choice add up to."""

    __slots__ = ("content", "finish_reason", "function_call", "refusal", "role", "tool_calls")

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] = []
        self.refusal: list[str] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def add(self, choice: Mapping[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.get("role"):
            self.role = delta["role"]
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            self.refusal = [*(self.refusal or []), delta["refusal"]]
        for call in delta.get("tool_calls") or ():
            if isinstance(call, Mapping):
                _merge_tool_call(self.tool_calls, call)
        if isinstance(delta.get("function_call"), Mapping):
            self.function_call = self.function_call or {}
            _merge_function(self.function_call, delta["function_call"])
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role or "assistant",
            "content": "".join(self.content) if self.content else None,
        }
        if self.refusal is not None:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.function_call is not None:
            message["function_call"] = self.function_call
        return message


def completion_from_chunks(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``chat.completion`` document that streamed ``chat.completion.chunk`` dicts make.

    Content is concatenated per choice, tool-call deltas are merged by their index,
    and the usage comes from the usage chunk when there was one. A stream cut before
    its finish reason gives a document that :func:`is_complete` rejects.
    """
    chunks = list(chunks)
    doc = _head(chunks, "chat.completion")
    choices: dict[int, _ChoiceAcc] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            if isinstance(choice, Mapping):
                choices.setdefault(int(choice.get("index", 0)), _ChoiceAcc()).add(choice)
    doc["choices"] = [
        {
            "index": i,
            "message": choices[i].message(),
            "logprobs": None,
            "finish_reason": choices[i].finish_reason,
        }
        for i in sorted(choices)
    ]
    usage = _usage(chunks)
    if usage is not None:
        doc["usage"] = usage
    return doc


def _chunk(doc: Mapping[str, Any], obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": doc.get("id", ""),
        "object": obj,
        "created": doc.get("created", 0),
        "model": doc.get("model", ""),
    }
    for name in ("system_fingerprint", "service_tier"):
        if doc.get(name) is not None:
            chunk[name] = doc[name]
    chunk["choices"] = choices
    return chunk


def _message_deltas(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    # OpenAI's first delta carries the role and an empty content (null for tool calls).
    content = message.get("content")
    deltas: list[dict[str, Any]] = [
        {
            "role": message.get("role") or "assistant",
            "content": "" if isinstance(content, str) else None,
        }
    ]
    if isinstance(content, str):
        deltas.extend({"content": piece} for piece in split_text(content))
    if isinstance(message.get("refusal"), str):
        deltas.append({"refusal": message["refusal"]})
    for index, call in enumerate(message.get("tool_calls") or ()):
        deltas.append({"tool_calls": [{"index": index, **call}]})
    if isinstance(message.get("function_call"), Mapping):
        deltas.append({"function_call": dict(message["function_call"])})
    return deltas


def _with_usage(
    chunks: list[dict[str, Any]], doc: Mapping[str, Any], obj: str
) -> list[dict[str, Any]]:
    """As OpenAI streams with ``include_usage``: ``usage: null`` on every chunk, then a
    last chunk with no choices carrying the usage."""
    for chunk in chunks:
        chunk["usage"] = None
    last = _chunk(doc, obj, [])
    last["usage"] = doc.get("usage")
    return [*chunks, last]


def chunks_from_completion(
    doc: Mapping[str, Any], *, include_usage: bool = False
) -> list[dict[str, Any]]:
    """A well-formed ``chat.completion.chunk`` sequence that replays ``doc``.

    Per choice: a role delta, the content in pieces of whole words, any refusal and
    tool calls, then a chunk with the finish reason; with ``include_usage`` (the
    request's ``stream_options.include_usage``) a last chunk with no choices carries
    the usage, and the others carry ``usage: null``, as OpenAI streams them.
    """
    obj = "chat.completion.chunk"
    chunks: list[dict[str, Any]] = []
    for choice in doc.get("choices") or ():
        index = choice.get("index", 0)
        for delta in _message_deltas(choice.get("message") or {}):
            chunks.append(
                _chunk(
                    doc,
                    obj,
                    [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}],
                )
            )
        chunks.append(
            _chunk(
                doc,
                obj,
                [
                    {
                        "index": index,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": choice.get("finish_reason"),
                    }
                ],
            )
        )
    return _with_usage(chunks, doc, obj) if include_usage else chunks


def text_completion_from_chunks(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``text_completion`` document that a streamed ``/v1/completions`` answer makes."""
    chunks = list(chunks)
    doc = _head(chunks, "text_completion")
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, Mapping):
                continue
            index = int(choice.get("index", 0))
            texts.setdefault(index, [])
            finish.setdefault(index, None)
            if isinstance(choice.get("text"), str):
                texts[index].append(choice["text"])
            if choice.get("finish_reason") is not None:
                finish[index] = choice["finish_reason"]
    doc["choices"] = [
        {"index": i, "text": "".join(texts[i]), "logprobs": None, "finish_reason": finish[i]}
        for i in sorted(texts)
    ]
    usage = _usage(chunks)
    if usage is not None:
        doc["usage"] = usage
    return doc


def chunks_from_text_completion(
    doc: Mapping[str, Any], *, include_usage: bool = False
) -> list[dict[str, Any]]:
    """A well-formed streamed ``text_completion`` sequence that replays ``doc``."""
    obj = "text_completion"
    chunks: list[dict[str, Any]] = []
    for choice in doc.get("choices") or ():
        index = choice.get("index", 0)
        for piece in split_text(choice.get("text") or ""):
            chunks.append(
                _chunk(
                    doc,
                    obj,
                    [{"index": index, "text": piece, "logprobs": None, "finish_reason": None}],
                )
            )
        chunks.append(
            _chunk(
                doc,
                obj,
                [
                    {
                        "index": index,
                        "text": "",
                        "logprobs": None,
                        "finish_reason": choice.get("finish_reason"),
                    }
                ],
            )
        )
    return _with_usage(chunks, doc, obj) if include_usage else chunks


def is_complete(doc: Mapping[str, Any]) -> bool:
    """Whether every choice of the record ended with a finish reason (else: truncated)."""
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, Mapping) and c.get("finish_reason") for c in choices)


def is_tool_call(doc: Mapping[str, Any]) -> bool:
    """Whether the answer calls a tool (or a legacy function) instead of only talking."""
    for choice in doc.get("choices") or ():
        if not isinstance(choice, Mapping):
            continue
        message = choice.get("message") or {}
        if choice.get("finish_reason") in _TOOL_FINISH:
            return True
        if message.get("tool_calls") or message.get("function_call"):
            return True
    return False


def completion_text(doc: Mapping[str, Any]) -> str:
    """The first choice's text: a chat message's content or a text completion's text."""
    choices = doc.get("choices") or ()
    if not choices:
        return ""
    first = choices[0]
    if "message" in first:
        return str((first.get("message") or {}).get("content") or "")
    return str(first.get("text") or "")
