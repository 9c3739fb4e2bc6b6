"""The two workload families of bench/rag_reuse.py: chunk lengths, chunks per prompt,
determinism (SmolLM2's tokenizer, from the converted model cache; skipped without it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _smollm2 import default_cache_dir  # noqa: E402
from rag_reuse import CONFIGS, LONG_QUICK, QUICK, Config, curve_prompts  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer() -> object:
    cache = default_cache_dir()
    if not (cache / "tokenizer_config.json").is_file():
        pytest.skip("SmolLM2's converted model cache is not here (bench/_smollm2.py)")
    return transformers.AutoTokenizer.from_pretrained(cache)


def build(tokenizer: object, config: Config):  # type: ignore[no-untyped-def]
    return config.workload(tokenizer)


def test_long_family_has_longer_chunks_and_more_per_prompt(tokenizer: object) -> None:
    assert CONFIGS[("long", True)] is LONG_QUICK
    assert CONFIGS[("rag", True)] is QUICK
    long = build(tokenizer, LONG_QUICK)
    assert len(long.chunks) == LONG_QUICK.chunks
    assert len(long.prompts) == LONG_QUICK.prompts
    # A chunk is cut to 768 tokens; it has at least 384 unless its module ran out.
    lengths = long.chunk_tokens()
    assert max(lengths) <= 768
    assert min(lengths) >= 384
    for p in long.prompts:
        assert 6 <= len(p.chunks) <= 8
        assert len(set(p.chunks)) == len(p.chunks)
    short = build(tokenizer, QUICK)
    assert max(short.chunk_tokens()) <= 256
    assert all(3 <= len(p.chunks) <= 5 for p in short.prompts)
    assert build(tokenizer, LONG_QUICK) == long  # deterministic


def test_curve_prompts_reach_the_length(tokenizer: object) -> None:
    long = build(tokenizer, LONG_QUICK)
    frame = len(long.system_ids) + len(long.prompts[0].question_ids)
    for length in (512, 1024, 2048, 4096):
        prompts = curve_prompts(long, length, 2)
        assert len(prompts) == 2
        for p in prompts:
            total = frame + sum(len(long.chunks[c].ids) for c in p.chunks)
            assert total >= length
            # Adding chunks stopped as soon as the length was reached.
            assert total - len(long.chunks[p.chunks[-1]].ids) < length
        assert set(prompts[0].chunks).isdisjoint(prompts[1].chunks) or length >= 4096
