"""The chat-request helper keys on the last user message within an exact context."""

from __future__ import annotations

from typing import Any

import pytest

from semcached.clients.openai import chat_cache_key

BASE: dict[str, Any] = {
    "model": "gpt-x",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
}


def variant(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def test_text_is_the_last_user_message() -> None:
    key = chat_cache_key(BASE)
    assert key.text == "What is the capital of France?"
    assert len(key.partition) == 32


def test_partition_is_stable_and_ignores_the_question() -> None:
    other_question = variant(
        messages=[BASE["messages"][0], {"role": "user", "content": "Capital of Spain?"}]
    )
    assert chat_cache_key(BASE).partition == chat_cache_key(dict(BASE)).partition
    assert chat_cache_key(other_question).partition == chat_cache_key(BASE).partition


@pytest.mark.parametrize(
    "changed",
    [
        variant(model="gpt-y"),
        variant(tools=[{"type": "function", "function": {"name": "f"}}]),
        variant(temperature=0.9),
        variant(messages=[{"role": "system", "content": "Be verbose."}, BASE["messages"][1]]),
        variant(
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"},
                BASE["messages"][1],
            ]
        ),
    ],
)
def test_context_changes_change_the_partition(changed: dict[str, Any]) -> None:
    assert chat_cache_key(changed).partition != chat_cache_key(BASE).partition


def test_multipart_content() -> None:
    request = variant(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {}},
                    {"type": "text", "text": "b"},
                ],
            }
        ]
    )
    assert chat_cache_key(request).text == "a\nb"


@pytest.mark.parametrize("messages", [[], [{"role": "system", "content": "x"}], None])
def test_requests_without_user_message_are_rejected(messages: Any) -> None:
    with pytest.raises(ValueError, match="message"):
        chat_cache_key(variant(messages=messages))
