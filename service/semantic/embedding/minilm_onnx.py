"""The ``minilm`` backend on ONNX Runtime (``embedding.runtime = "onnx"``, the default).

Same model, same vectors as :mod:`.minilm` (cosine 1.0000 on 10,000 STS-B sentences
for the float export); measured on one core (bench/embedding_speed.py), about 2x
torch's throughput one text at a time and 1.4-1.7x in micro-batches of 16-32: the
graph's attention, GELU and layer norms are fused, the per-call overhead is small, and
nothing pads a text to its batch's longest. What
sentence-transformers does around the transformer is done here in numpy: the packaged
fast tokenizer truncating at its ``max_seq_length``, mean pooling over the attention
mask; rows are L2-normalised by the :class:`BatchingEmbedder` as for every backend.

A batch is split into runs of texts of similar token length (:func:`length_groups`): a
BERT layer costs in proportion to padded tokens, so one long text no longer makes
every short one in its batch as slow as itself.

When onnxruntime is missing or the export fails, :class:`OnnxMiniLMBackend` logs one
warning and runs the torch backend instead (:attr:`OnnxMiniLMBackend.runtime` says which).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from semcached.cachepolicy.token_codec import pack_tokens
from semcached.cachepolicy.verify_features import TokenEmbeddings
from semcached.service.blocking import run_blocking
from semcached.service.semantic.embedding.base import EmbeddingUnavailableError, Matrix
from semcached.service.semantic.embedding.minilm import (
    MINILM_DIM,
    MINILM_MODEL_NAME,
    MiniLMBackend,
    default_torch_threads,
    minilm_model_path,
    unit_tokens,
    usable_cpus,
)
from semcached.service.semantic.embedding.onnx_export import (
    ExportParams,
    default_model_cache_dir,
    onnx_model_file,
)

__all__ = ["OnnxEncoder", "OnnxMiniLMBackend", "length_groups"]

log = logging.getLogger(__name__)

GROUP_SLACK = 1.25
"""A group's padded tokens may exceed its real tokens by this factor (plus 8 tokens)."""


def length_groups(lengths: Sequence[int], max_group: int = 64) -> list[list[int]]:
    """Indices of ``lengths`` in runs of similar length, shortest first, at most
    ``max_group`` per run, each run padded to at most ``GROUP_SLACK`` times its tokens."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        n = lengths[i]  # sorted ascending: the newest member is the group's longest
        padded = n * (len(current) + 1)
        if current and (len(current) >= max_group or padded > GROUP_SLACK * (tokens + n) + 8):
            groups.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += n
    if current:
        groups.append(current)
    return groups


class OnnxEncoder:
    """The exported MiniLM in one ONNX Runtime session, with its tokenizer; blocking
    calls (ONNX Runtime's ``run`` is thread-safe; each call uses ``threads`` cores)."""

    def __init__(self, model_file: str, model_path: str, *, threads: int) -> None:
        ort = importlib.import_module("onnxruntime")
        tokenizers = importlib.import_module("tokenizers")
        with open(os.path.join(model_path, "sentence_bert_config.json"), encoding="utf-8") as f:
            self.max_seq_length = int(json.load(f)["max_seq_length"])
        # tokenizer.json pads and truncates to 128; sentence-transformers overrides both
        # (no padding, its max_seq_length), and so do we.
        self._tokenizer: Any = tokenizers.Tokenizer.from_file(
            os.path.join(model_path, "tokenizer.json")
        )
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)
        self._tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads steal the core a busy neighbour needs (cf. default_torch_threads).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = ort.InferenceSession(
            model_file, options, providers=["CPUExecutionProvider"]
        )

    def _hidden(self, texts: Sequence[str]) -> tuple[list[NDArray[np.float32]], list[list[int]]]:
        """Each text's last hidden states (its own tokens only) and token ids."""
        encodings = self._tokenizer.encode_batch(list(texts))
        ids_of: list[list[int]] = [e.ids for e in encodings]
        hidden: list[NDArray[np.float32]] = [np.empty(0, np.float32)] * len(texts)
        for group in length_groups([len(ids) for ids in ids_of]):
            width = max(len(ids_of[i]) for i in group)
            input_ids = np.zeros((len(group), width), dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            for row, i in enumerate(group):
                input_ids[row, : len(ids_of[i])] = ids_of[i]
                mask[row, : len(ids_of[i])] = 1
            (out,) = self._session.run(
                None,
                {
                    "input_ids": input_ids,
                    "attention_mask": mask,
                    "token_type_ids": np.zeros_like(input_ids),
                },
            )
            for row, i in enumerate(group):
                hidden[i] = out[row, : len(ids_of[i])]
        return hidden, ids_of

    def encode(self, texts: Sequence[str]) -> Matrix:
        """Mean-pooled sentence vectors (not normalised), in the order of ``texts``."""
        hidden, _ = self._hidden(texts)
        vectors = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        for i, h in enumerate(hidden):
            vectors[i] = h.mean(axis=0)
        return vectors

    def encode_with_tokens(self, texts: Sequence[str]) -> tuple[Matrix, list[TokenEmbeddings]]:
        """As :func:`.minilm.encode_with_tokens`: unit sentence vectors and the token
        embeddings without [CLS] and [SEP], each row normalised."""
        hidden, ids_of = self._hidden(texts)
        vectors = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        tokens: list[TokenEmbeddings] = []
        for i, h in enumerate(hidden):
            vectors[i] = h.mean(axis=0)
            tokens.append(unit_tokens(ids_of[i][1:-1], h[1:-1]))
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors, tokens


class OnnxMiniLMBackend:
    """all-MiniLM-L6-v2 on ONNX Runtime, exported and cached at :meth:`open`; torch
    (:class:`MiniLMBackend`) when that cannot be done.

    ``runtime_module`` names the ONNX Runtime module (a missing name takes the torch
    path, as a machine without onnxruntime does).
    """

    name = MINILM_MODEL_NAME
    dim = MINILM_DIM

    def __init__(
        self,
        executor: Executor,
        *,
        threads: int | None = None,
        model_path: str | None = None,
        cache_dir: Path | None = None,
        int8: bool = False,
        runtime_module: str = "onnxruntime",
    ) -> None:
        self._executor = executor
        self.threads = threads or default_torch_threads()
        self.torch_threads = self.threads  # the name the torch backend's readers use
        self._model_path = model_path
        self.cache_dir = cache_dir or default_model_cache_dir()
        self.params = ExportParams(int8=int8)
        self._runtime_module = runtime_module
        self._encoder: OnnxEncoder | None = None
        self._torch: MiniLMBackend | None = None
        self.model_file: Path | None = None

    @property
    def max_concurrency(self) -> int:
        """Batches run at once: ONNX Runtime's ``run`` is thread-safe and releases the
        GIL, so one batch per ``threads`` cores keeps every core busy under load
        (measured on 2 cores, 64 callers: 1.64x torch's texts/s with 2 batches, 1.17x
        with 1); torch, the fallback, runs one at a time."""
        if self._torch is not None:
            return 1
        return max(1, usable_cpus() // self.threads)

    @property
    def runtime(self) -> str:
        """``onnx``, ``torch`` (the fallback), or ``closed``."""
        if self._encoder is not None:
            return "onnx-int8" if self.params.int8 else "onnx"
        return "torch" if self._torch is not None else "closed"

    async def open(self) -> None:
        try:
            self._encoder = await run_blocking(self._executor, self._load)
        except Exception as exc:  # the export or the runtime failed: torch still works
            log.warning("embedding.runtime = 'onnx' unavailable (%s); running MiniLM on torch", exc)
            fallback = MiniLMBackend(
                self._executor, torch_threads=self.threads, model_path=self._model_path
            )
            await fallback.open()
            self._torch = fallback

    def _load(self) -> OnnxEncoder:
        started = time.perf_counter()
        importlib.import_module(self._runtime_module)
        path = self._model_path or minilm_model_path()
        self.model_file = onnx_model_file(path, self.cache_dir, self.params)
        encoder = OnnxEncoder(str(self.model_file), path, threads=self.threads)
        encoder.encode(["warm-up"])  # first call allocates; keep it off requests
        log.info(
            "loaded %s on ONNX Runtime (%s) in %.2f s (%d threads)",
            MINILM_MODEL_NAME,
            self.model_file.name,
            time.perf_counter() - started,
            self.threads,
        )
        return encoder

    async def embed_batch(self, texts: list[str]) -> Matrix:
        if self._torch is not None:
            return await self._torch.embed_batch(texts)
        encoder = self._encoder
        if encoder is None:
            raise EmbeddingUnavailableError("the MiniLM model is not loaded")
        return await run_blocking(self._executor, encoder.encode, texts)

    async def embed_batch_with_tokens(
        self, texts: list[str], max_tokens: int
    ) -> tuple[Matrix, list[bytes]]:
        if self._torch is not None:
            return await self._torch.embed_batch_with_tokens(texts, max_tokens)
        encoder = self._encoder
        if encoder is None:
            raise EmbeddingUnavailableError("the MiniLM model is not loaded")

        def run() -> tuple[Matrix, list[bytes]]:
            rows, tokens = encoder.encode_with_tokens(texts)
            return rows, [pack_tokens(t, max_tokens) for t in tokens]

        return await run_blocking(self._executor, run)

    async def close(self) -> None:
        self._encoder = None
        if self._torch is not None:
            await self._torch.close()
            self._torch = None
