"""What the integrations' suites share: a real daemon that embeds text through its
``http`` backend, served here by a bag-of-words ``/v1/embeddings`` service (texts that
share most words are near: a paraphrase that keeps the words hits, another question
misses), and the misbehaving servers of :mod:`tests.unwell`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.daemon import DaemonProcess
from tests.service.semantic.kit import bow
from tests.unwell import AppThread

# litellm fetches its model price map from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

DIM = 256


async def _embeddings(request: web.Request) -> web.Response:
    texts: list[str] = (await request.json())["input"]
    data = [{"index": i, "embedding": bow(t, DIM).tolist()} for i, t in enumerate(texts)]
    return web.json_response({"object": "list", "data": data})


@pytest.fixture(scope="session")
def embeddings_url() -> Iterator[str]:
    app = web.Application()
    app.router.add_post("/v1/embeddings", _embeddings)
    with AppThread(app) as server:
        yield server.url


@pytest.fixture
def text_daemon(tmp_path: Path, embeddings_url: str) -> Iterator[DaemonProcess]:
    """A real daemon that embeds text (bag of words), ready to serve."""
    process = DaemonProcess(
        tmp_path / "data",
        ["--embedding.backend", "http", "--embedding.http_url", embeddings_url],
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.terminate()


@pytest.fixture
def text_daemon_url(text_daemon: DaemonProcess) -> str:
    return text_daemon.wait_listening()
