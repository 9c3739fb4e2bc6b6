"""``POST /v1/semantic/feedback`` over HTTP: what it records, every bad input, what
stats and metrics then show. (Tokens and tenants: the tenancy matrix.)"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.http.test_semantic_routes import Client, client, post, unit

__all__ = ["client"]  # the fixture, imported for this module's tests


async def hit(client: Client, seed: int) -> tuple[int, str]:
    """Insert an entry and look it up: (entry id, the hit's lookup id)."""
    status, created, _ = await post(
        client,
        "/v1/semantic/entries",
        {"namespace": "t1", "prompt": f"p{seed}", "response": seed, "vector": unit(seed)},
    )
    assert status == 201
    status, found, _ = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "vector": unit(seed)}
    )
    assert status == 200
    assert found["hit"]
    assert found["entry_id"] == created["entry_id"]
    return created["entry_id"], found["lookup_id"]


async def test_a_report_says_what_it_recorded(client: Client) -> None:
    entry_id, lookup_id = await hit(client, 1)
    status, reply, _ = await post(
        client,
        "/v1/semantic/feedback",
        {"lookup_id": lookup_id, "correct": True, "reason": "the user accepted it"},
    )
    assert status == 200
    assert {k: reply[k] for k in ("entry_id", "category", "correct", "counted", "removed")} == {
        "entry_id": entry_id, "category": "default", "correct": True, "counted": True,
        "removed": False,
    }  # fmt: skip
    calibration = reply["calibration"]
    assert calibration["source"] == "off"  # the default category states no budget
    assert (calibration["observations"], calibration["false_hits"]) == (1, 0)
    assert calibration["threshold"] == calibration["configured_threshold"] == 0.85
    assert calibration["confidence"] == 0.95
    assert calibration["estimate"] == 0.0
    assert 0 < calibration["upper_bound"] < 1

    stats = await (await client.get("/v1/semantic/stats")).json()
    assert stats["categories"]["default"]["calibration"] == calibration
    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("semcached_semantic_threshold", (("category", "default"),))] == 0.85
    assert samples[("semcached_semantic_feedback_observations", (("category", "default"),))] == 1
    key = (
        "semcached_semantic_feedback_reports_total",
        (("category", "default"), ("correct", "true")),
    )
    assert samples[key] == 1
    upper = ("semcached_semantic_false_hit_rate_upper_bound", (("category", "default"),))
    assert samples[upper] == pytest.approx(calibration["upper_bound"])


async def test_a_wrong_hit_removes_its_entry(client: Client) -> None:
    entry_id, lookup_id = await hit(client, 2)
    status, reply, _ = await post(
        client, "/v1/semantic/feedback", {"lookup_id": lookup_id, "correct": False}
    )
    assert status == 200
    assert (reply["removed"], reply["counted"], reply["calibration"]["false_hits"]) == (
        True, True, 1,
    )  # fmt: skip
    gone = await client.get(f"/v1/semantic/entries/{entry_id}", params={"namespace": "t1"})
    assert gone.status == 404
    status, after, _ = await post(
        client, "/v1/semantic/lookup", {"namespace": "t1", "vector": unit(2)}
    )
    assert (status, after["hit"], "lookup_id" in after) == (200, False, False)


async def test_by_entry_id_and_repeated_reports(client: Client) -> None:
    entry_id, lookup_id = await hit(client, 3)
    status, reply, _ = await post(
        client, "/v1/semantic/feedback", {"entry_id": entry_id, "correct": True}
    )
    assert (status, reply["counted"], reply["removed"]) == (200, False, False)
    for counted in (True, False):  # a retry of the same report counts once
        status, reply, _ = await post(
            client, "/v1/semantic/feedback", {"lookup_id": lookup_id, "correct": True}
        )
        assert (status, reply["counted"]) == (200, counted)
    status, reply, _ = await post(
        client, "/v1/semantic/feedback", {"entry_id": entry_id, "correct": False}
    )
    assert (status, reply["removed"]) == (200, True)
    status, reply, _ = await post(
        client, "/v1/semantic/feedback", {"entry_id": entry_id, "correct": False}
    )
    assert (status, reply["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"correct": True}, "missing_field", "lookup_id"),
        ({"lookup_id": "abc", "entry_id": 5, "correct": True}, "invalid_field", "lookup_id"),
        ({"lookup_id": "abc"}, "missing_field", "correct"),
        ({"lookup_id": "abc", "correct": "yes"}, "invalid_field", "correct"),
        ({"lookup_id": "a b", "correct": True}, "invalid_field", "lookup_id"),
        ({"lookup_id": "a" * 1025, "correct": True}, "invalid_field", "lookup_id"),
        ({"entry_id": 0, "correct": True}, "invalid_field", "entry_id"),
        ({"entry_id": "7", "correct": True}, "invalid_field", "entry_id"),
        ({"entry_id": 7, "correct": True, "reason": "x" * 1025}, "invalid_field", "reason"),
        ({"entry_id": 7, "correct": True, "extra": 1}, "unknown_field", "extra"),
    ],
)
async def test_malformed_reports_name_the_field(
    client: Client, body: dict[str, Any], code: str, field: str
) -> None:
    status, error, _ = await post(client, "/v1/semantic/feedback", body)
    assert (status, error["error"]["code"], error["error"].get("field")) == (400, code, field)


@pytest.mark.parametrize(
    "body",
    [
        {"lookup_id": "bm90LWEtbG9va3VwLWlk", "correct": True},  # well-formed, not signed
        {"entry_id": 123456789, "correct": False},
    ],
)
async def test_unknown_ids_are_404(client: Client, body: dict[str, Any]) -> None:
    status, error, _ = await post(client, "/v1/semantic/feedback", body)
    assert (status, error["error"]["code"]) == (404, "not_found")
