"""Hit verification as the daemon wires it: on, off by configuration, or off by a bad
model file (never a crash), said in /readyz, the stats and the metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from semcached.service.config import EmbeddingSettings, VerificationSettings, load_settings
from semcached.service.http.app import create_app
from semcached.service.semantic.verification import choose_verifier
from tests.service.http.test_semantic_classify import (
    BowService,
    ClientFactory,
    environ,
    ready,
    service,  # noqa: F401  (a fixture)
    stats,
)

MINILM = EmbeddingSettings(backend="minilm")


def test_the_shipped_verifier_runs_for_minilm() -> None:
    choice = choose_verifier(VerificationSettings(), MINILM, "all-MiniLM-L6-v2")
    assert choice.verifier is not None
    assert choice.reason is None


@pytest.mark.parametrize(
    ("settings", "embedding", "name", "reason", "degraded"),
    [
        (
            VerificationSettings(enabled=False),
            MINILM,
            "all-MiniLM-L6-v2",
            "enabled is false",
            False,
        ),
        (VerificationSettings(), EmbeddingSettings(backend="none"), "none", "'none'", False),
        (VerificationSettings(), MINILM, "bge-small", "trained on all-MiniLM-L6-v2", False),
        (
            VerificationSettings(model="/absent/v.json"),
            MINILM,
            "all-MiniLM-L6-v2",
            "cannot read",
            True,
        ),
    ],
    ids=["disabled", "no-embedder", "other-model", "missing-file"],
)
def test_why_verification_is_off(
    settings: VerificationSettings,
    embedding: EmbeddingSettings,
    name: str,
    reason: str,
    degraded: bool,
) -> None:
    choice = choose_verifier(settings, embedding, name)
    assert choice.verifier is None
    assert choice.reason is not None
    assert reason in choice.reason
    assert choice.degraded is degraded


async def test_a_wrong_version_model_file_starts_the_daemon_without_verification(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    service: tuple[BowService, str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = tmp_path / "verifier.json"
    model.write_text('{"format": "semcached-verifier/0"}')
    env = environ(tmp_path, service[1]) | {"SEMCACHED_VERIFICATION_MODEL": str(model)}
    client = await ready(await aiohttp_client(create_app(load_settings(environ=env))))
    assert "hit verification is off" in caplog.text
    readiness = await (await client.get("/readyz")).json()
    assert readiness["status"] == "ready"
    assert "semcached-verifier/0" in readiness["degraded"]["verification"]
    verification = (await stats(client))["verification"]
    assert verification["enabled"] is False
    assert "semcached-verifier/0" in verification["reason"]
    # Lookups still work, decided by the threshold alone.
    body = {"namespace": "t1", "prompt": "a b c", "response": "x"}
    assert (await client.post("/v1/semantic/entries", json=body)).status == 201
    looked = await (
        await client.post("/v1/semantic/lookup", json={"namespace": "t1", "text": "a b c d"})
    ).json()
    assert looked["verifier_score"] is None
    metrics = await (await client.get("/metrics")).text()
    enabled = {
        s.name: s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == "semcached_semantic_verification_enabled"
    }
    assert enabled == {"semcached_semantic_verification_enabled": 0.0}


async def test_another_embedding_model_is_off_but_not_degraded(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    service: tuple[BowService, str],  # noqa: F811
) -> None:
    client = await ready(
        await aiohttp_client(create_app(load_settings(environ=environ(tmp_path, service[1]))))
    )
    readiness = await (await client.get("/readyz")).json()
    assert "degraded" not in readiness
    verification = (await stats(client))["verification"]
    assert verification["enabled"] is False
    assert "trained on all-MiniLM-L6-v2" in verification["reason"]
