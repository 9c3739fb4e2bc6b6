"""Streamed chunks <-> one completion document: the record a caching layer stores."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from semcached.protocol.chat_replay import (
    chunks_from_completion,
    chunks_from_text_completion,
    completion_from_chunks,
    completion_text,
    is_complete,
    is_tool_call,
    split_text,
    text_completion_from_chunks,
)

usages = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "prompt_tokens": st.integers(0, 10_000),
            "completion_tokens": st.integers(0, 10_000),
            "total_tokens": st.integers(0, 20_000),
        }
    ),
)
finishes = st.sampled_from(["stop", "length", "content_filter"])


def chat_doc(content: str, finish: str, usage: dict[str, int] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
    }
    if usage is not None:
        doc["usage"] = usage
    return doc


@given(st.text(), st.integers(1, 200))
def test_split_text_concatenates_back(text: str, piece: int) -> None:
    pieces = split_text(text, piece)
    assert "".join(pieces) == text
    assert all(pieces)
    assert all(len(p) <= piece for p in pieces)


@given(st.text(), finishes, usages, st.booleans())
def test_chat_round_trip(
    content: str, finish: str, usage: dict[str, int] | None, include_usage: bool
) -> None:
    doc = chat_doc(content, finish, usage)
    chunks = chunks_from_completion(doc, include_usage=include_usage)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    back = completion_from_chunks(chunks)
    assert back["choices"][0]["message"] == {"role": "assistant", "content": content}
    assert back["choices"][0]["finish_reason"] == finish
    assert (back["id"], back["created"], back["model"]) == ("chatcmpl-1", 1_700_000_000, "gpt-x")
    assert back.get("usage") == (usage if include_usage else None)
    assert is_complete(back)
    assert completion_text(back) == content


def test_usage_chunk_is_last_and_has_no_choices() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    chunks = chunks_from_completion(chat_doc("Hello there", "stop", usage), include_usage=True)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == usage
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert "usage" not in chunks_from_completion(chat_doc("x", "stop", usage))[-1]


def test_tool_call_deltas_merge_by_index() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f"}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": '}}]}),
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g"}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ]
    doc = completion_from_chunks(chunks)
    message = doc["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    assert is_tool_call(doc)
    assert is_complete(doc)
    # And the replay of that record merges back to the same calls.
    assert completion_from_chunks(chunks_from_completion(doc)) == doc


def test_a_stream_cut_before_its_finish_is_not_complete() -> None:
    chunks = chunks_from_completion(chat_doc("a long answer", "stop", None))
    cut = completion_from_chunks(chunks[:-1])
    assert cut["choices"][0]["finish_reason"] is None
    assert not is_complete(cut)
    assert not is_complete(completion_from_chunks([]))
    assert not is_tool_call(chat_doc("plain", "stop", None))


@given(st.text(), finishes, usages, st.booleans())
def test_text_completion_round_trip(
    text: str, finish: str, usage: dict[str, int] | None, include_usage: bool
) -> None:
    doc: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "gpt-x-instruct",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        doc["usage"] = usage
    chunks = chunks_from_text_completion(doc, include_usage=include_usage)
    back = text_completion_from_chunks(chunks)
    assert back["choices"] == doc["choices"]
    assert back.get("usage") == (usage if include_usage else None)
    assert back["object"] == "text_completion"
    assert is_complete(back)
    assert completion_text(back) == text
