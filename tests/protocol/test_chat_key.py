"""The chat-request key: the last user message within an exact context; the prompt key."""

from __future__ import annotations

from typing import Any

import pytest

from semcached.clients import openai as client_helpers
from semcached.protocol.chat import chat_cache_key, completion_cache_key

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


def test_clients_keep_the_helper_name() -> None:
    assert client_helpers.chat_cache_key is chat_cache_key


def test_completion_key_is_the_prompt_in_a_partition_of_its_own() -> None:
    request = {"model": "gpt-x", "prompt": "Say hi", "max_tokens": 5}
    key = completion_cache_key(request)
    assert key.text == "Say hi"
    assert completion_cache_key({**request, "prompt": ["Say hi"]}) == key
    assert completion_cache_key({**request, "prompt": "Other"}).partition == key.partition
    assert completion_cache_key({**request, "max_tokens": 6}).partition != key.partition
    assert completion_cache_key({**request, "suffix": "!"}).partition != key.partition
    # Never the partition of a chat request of the same model.
    chat = chat_cache_key({"model": "gpt-x", "messages": [{"role": "user", "content": "Say hi"}]})
    assert chat.partition != key.partition


@pytest.mark.parametrize("prompt", ["", ["a", "b"], [1, 2, 3], None])
def test_completion_requests_without_one_text_prompt_are_rejected(prompt: Any) -> None:
    with pytest.raises(ValueError, match="prompt"):
        completion_cache_key({"model": "gpt-x", "prompt": prompt})
