"""Load reports over HTTP: ``POST /v1/semantic/load`` and the lookup header, hysteresis
and staleness as a gateway sees them, every bad input, bounds, stats and metrics, and
tenants (a report relaxes only its own namespace; a read-only token cannot report)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from semcached.service.config import load_settings
from semcached.service.http.app import create_app
from semcached.service.http.appkeys import READINESS, SEMANTIC
from tests.service.http.tenancy_kit import auth, start, tenancy_settings
from tests.service.http.test_semantic_routes import DIM, Client, ClientFactory, post, unit
from tests.service.semantic.kit import Clock

HEADER = "X-Semcached-Model-Load"
CONFIG = """
[categories.busy]
threshold = 0.9
load_min_threshold = 0.8
load_ttl_factor = 2.0

[load]
half_life_s = 0.001
queue_depth_target = 10
max_models = 2

[load_models."gpt-4o"]
latency_ms_target = 1000
"""


def near(seed: int, similarity: float) -> list[float]:
    """A unit vector at exactly ``similarity`` to ``unit(seed)``."""
    base = np.asarray(unit(seed))
    other = np.random.default_rng(seed + 1000).standard_normal(DIM)
    other -= other.dot(base) * base
    other /= np.linalg.norm(other)
    return (similarity * base + np.sqrt(1 - similarity**2) * other).tolist()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    settings = load_settings(
        config_file=config,
        environ={
            "SEMCACHED_STORAGE_DATA_DIR": str(tmp_path / "data"),
            "SEMCACHED_EMBEDDING_BACKEND": "none",
            "SEMCACHED_SEMANTIC_NAMESPACES": "t1,t2",
        },
    )
    c = await aiohttp_client(create_app(settings))
    for _ in range(500):
        if c.app[READINESS].is_ready:
            break
        await asyncio.sleep(0.01)
    c.app[SEMANTIC].get().load.clock = Clock()  # reports at times the test sets
    return c


def clock_of(client: Client) -> Clock:
    clock = client.app[SEMANTIC].get().load.clock
    assert isinstance(clock, Clock)
    return clock


async def report(client: Client, **body: Any) -> tuple[int, Any]:
    status, reply, _ = await post(client, "/v1/semantic/load", {"namespace": "t1", **body})
    return status, reply


async def test_reports_engage_and_release_with_hysteresis(client: Client) -> None:
    clock = clock_of(client)
    levels = []
    for depth in (8, 11, 8, 6, 8, 20):
        clock.now += 1
        status, reply = await report(client, model="gpt-4o", queue_depth=depth)
        assert status == 200
        assert (reply["namespace"], reply["model"]) == ("t1", "gpt-4o")
        levels.append((reply["engaged"], round(reply["level"], 3)))
    assert levels == [
        (False, 0.0), (True, 0.308), (True, 0.077), (False, 0.0), (False, 0.0), (True, 1.0),
    ]  # fmt: skip
    clock.now += 1  # latency over its own target (1000 ms for gpt-4o): the busier signal
    status, reply = await report(client, model="gpt-4o", queue_depth=1, latency_ms=1500)
    assert reply["pressure"] == pytest.approx(1.5)


async def test_a_loaded_model_relaxes_lookups_until_its_reports_go_stale(client: Client) -> None:
    status, _created, _ = await post(
        client,
        "/v1/semantic/entries",
        {"namespace": "t1", "prompt": "p", "response": 1, "vector": unit(1), "category": "busy"},
    )
    assert status == 201
    lookup = {"namespace": "t1", "vector": near(1, 0.85), "category": "busy", "model": "gpt-4o"}
    status, miss, _ = await post(client, "/v1/semantic/lookup", lookup)
    assert (miss["hit"], miss["load_level"]) == (False, 0.0)
    await report(client, model="gpt-4o", queue_depth=30)
    status, hit, _ = await post(client, "/v1/semantic/lookup", lookup)
    assert (hit["hit"], hit["load_level"]) == (True, 1.0)
    # Another namespace naming the same model is not relaxed.
    other = {**lookup, "namespace": "t2"}
    assert (await post(client, "/v1/semantic/lookup", other))[1]["load_level"] == 0.0

    stats = await (await client.get("/v1/semantic/stats")).json()
    assert stats["categories"]["busy"]["relaxed_lookups"] == 1
    assert stats["categories"]["busy"]["relaxed_hits"] == 1
    assert [(m["namespace"], m["model"], m["level"]) for m in stats["load"]] == [
        ("t1", "gpt-4o", 1.0)
    ]
    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    key = ("semcached_semantic_load_level", (("model", "gpt-4o"), ("namespace", "t1")))
    assert samples[key] == 1.0
    assert samples[("semcached_semantic_relaxed_hits_total", (("category", "busy"),))] == 1

    clock_of(client).now += 61  # the gateway stopped reporting: static again
    status, after, _ = await post(client, "/v1/semantic/lookup", lookup)
    assert (after["hit"], after["load_level"]) == (False, 0.0)


async def test_the_lookup_header_reports_and_names_the_model(client: Client) -> None:
    await post(
        client,
        "/v1/semantic/entries",
        {"namespace": "t1", "prompt": "p", "response": 1, "vector": unit(2), "category": "busy"},
    )
    body = {"namespace": "t1", "vector": near(2, 0.85), "category": "busy"}
    response = await client.post(
        "/v1/semantic/lookup", json=body, headers={HEADER: "model=llama; queue_depth=25"}
    )
    reply = await response.json()
    assert (response.status, reply["hit"], reply["load_level"]) == (200, True, 1.0)
    batch = {"lookups": [body, {**body, "namespace": "t2"}]}
    response = await client.post(
        "/v1/semantic/lookup:batch", json=batch, headers={HEADER: "model=llama;queue_depth=25"}
    )
    assert [r["load_level"] for r in (await response.json())["results"]] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m"}, "queue_depth"),
        ({"queue_depth": 1}, "model"),
        ({"model": "bad model", "queue_depth": 1}, "model"),
        ({"model": "m", "queue_depth": -1}, "queue_depth"),
        ({"model": "m", "latency_ms": "slow"}, "latency_ms"),
        ({"model": "m", "queue_depth": 1, "namespace": "t9"}, "namespace"),
        ({"model": "m", "queue_depth": 1, "load": 3}, "load"),
    ],
)
async def test_bad_reports_are_400_naming_the_field(
    client: Client, body: dict[str, Any], field: str
) -> None:
    status, reply = await report(client, **body)
    assert status == 400
    assert reply["error"]["field"] == field


@pytest.mark.parametrize(
    "value",
    [
        "queue_depth=3",
        "model=m",
        "model=m; queue_depth=x",
        "model=m; queue_depth=-1",
        "model=m; depth=3",
        "model=m; queue_depth=3; queue_depth=4",
        "model=a b; queue_depth=3",
    ],
)
async def test_a_malformed_header_is_400_naming_it(client: Client, value: str) -> None:
    body = {"namespace": "t1", "vector": unit(3)}
    response = await client.post("/v1/semantic/lookup", json=body, headers={HEADER: value})
    assert response.status == 400
    assert (await response.json())["error"]["field"] == HEADER


async def test_at_most_max_models_per_tenant(client: Client) -> None:
    assert (await report(client, model="a", queue_depth=1))[0] == 200
    assert (await report(client, model="b", queue_depth=1, namespace="t2"))[0] == 200
    response = await client.post(
        "/v1/semantic/load", json={"namespace": "t1", "model": "c", "queue_depth": 1}
    )
    reply = await response.json()
    assert (response.status, reply["error"]["code"]) == (429, "too_many_models")
    assert response.headers["Retry-After"] == "60"
    clock_of(client).now += 61  # stale models give their places up
    assert (await report(client, model="c", queue_depth=1))[0] == 200


async def test_reports_are_scoped_to_the_tenant(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await start(aiohttp_client, tenancy_settings(tmp_path))
    body = {"namespace": "acme", "model": "m", "queue_depth": 1000}
    response = await client.post("/v1/semantic/load", json=body, headers=auth("acme_rw"))
    assert (response.status, (await response.json())["level"]) == (200, 1.0)
    # bobco's lookups naming the same model are not relaxed by acme's report.
    lookup = {"namespace": "bobco", "vector": unit(4)[:8], "model": "m"}
    response = await client.post("/v1/semantic/lookup", json=lookup, headers=auth("bob"))
    assert (await response.json())["load_level"] == 0.0
    # Reporting for another tenant's namespace, by body or header: 403.
    response = await client.post(
        "/v1/semantic/load", json={**body, "namespace": "bobco"}, headers=auth("acme_rw")
    )
    assert response.status == 403
    # A read-only token may look up, but not report load through the header.
    response = await client.post(
        "/v1/semantic/lookup",
        json={"namespace": "acme", "vector": unit(4)[:8]},
        headers={**auth("acme_ro"), HEADER: "model=m; queue_depth=3"},
    )
    reply = await response.json()
    assert (response.status, reply["error"]["code"]) == (403, "insufficient_scope")
