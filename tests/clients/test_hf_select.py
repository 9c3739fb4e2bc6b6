"""CacheBlend-style selective recompute (clients/hf_forward.py): the per-chunk choice
of the most deviating tokens, and a partial forward that narrows to them after the
check layer. A random-initialised tiny Llama (fixed seed, float32, four layers)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from semcached.clients.hf_forward import (  # noqa: E402
    CHECK_LAYER,
    Selection,
    kv_deviation,
    select_tokens,
    top_per_group,
)
from semcached.clients.hf_kv import (  # noqa: E402
    RopeShifter,
    assemble_cache,
    cache_kwargs,
    cache_slice,
)

torch.set_num_threads(1)
VOCAB = 512


@pytest.fixture(scope="module")
def model() -> transformers.LlamaForCausalLM:
    torch.manual_seed(3)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config).eval()


def ids(seed: int, n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(3, VOCAB, n)).long()


def prefill(model: transformers.LlamaForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    cache = transformers.DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=tokens.view(1, -1), use_cache=True, **cache_kwargs(model, cache))
    return cache_slice(cache)


def test_top_per_group_keeps_the_largest_in_each_group_and_all_ungrouped() -> None:
    deviation = torch.tensor([0.1, 5.0, 3.0, 5.0, 9.0, 0.0, 1.0, 2.0, 2.0, 7.0])
    # Group [0, 4): keep 2 -> 1 and 3 (the two 5.0s, ties to the earlier); index 4
    # ungrouped (kept); group [5, 9): keep 1 -> 7 (2.0 twice: the earlier); 9 ungrouped.
    keep = top_per_group([(0, 4, 2), (5, 9, 1)])(deviation)
    assert keep.tolist() == [1, 3, 4, 7, 9]
    assert top_per_group([(0, 4, 0)])(deviation[:4]).tolist() == []
    with pytest.raises(ValueError, match="outside"):
        top_per_group([(0, 11, 1)])(deviation)


def test_kv_deviation_is_the_squared_distance_at_the_positions() -> None:
    keys = torch.zeros(1, 2, 6, 4)
    values = torch.zeros(1, 2, 6, 4)
    fresh_k = torch.zeros(1, 2, 2, 4)
    fresh_v = torch.zeros(1, 2, 2, 4)
    fresh_k[0, 1, 0, 2] = 3.0  # position 2: 9 from a key
    fresh_v[0, 0, 1, :] = 1.0  # position 5: 4 from a value
    keys[0, 0, 5, 0] = 1.0  # and 1 more: cached key 1 where the fresh one is 0
    dev = kv_deviation(keys, values, fresh_k, fresh_v, torch.tensor([2, 5]))
    assert dev.tolist() == [9.0, 5.0]


def test_select_tokens_lays_out_misses_picks_and_checked_chunks() -> None:
    chunks = [(10, 14, None), (14, 20, [1, 4]), (20, 23, [])]
    plain = select_tokens(chunks)
    assert plain.positions == [10, 11, 12, 13, 15, 18]
    assert plain.groups == []
    assert plain.token_layers(30) == 6 * 30
    checked = select_tokens(chunks, by_deviation=True)
    assert checked.positions == [10, 11, 12, 13, *range(14, 20)]
    assert checked.groups == [(4, 10, 2)]
    # 4 miss tokens through all 30 layers; 6 checked through CHECK_LAYER + 1, 2 kept after.
    early = CHECK_LAYER + 1
    assert checked.token_layers(30) == 4 * 30 + 6 * early + 2 * (30 - early)
    with pytest.raises(ValueError, match="prompt order"):
        select_tokens([(5, 8, [0]), (0, 5, [0])])


def test_cacheblend_selection_recomputes_the_largest_deviations(
    model: transformers.LlamaForCausalLM,
) -> None:
    system, a, c = ids(1, 6), ids(2, 20), ids(3, 24)
    full = prefill(model, torch.cat([system, a, c]))
    start = system.numel() + a.numel()
    alone = prefill(model, torch.cat([system, c]))
    moved = RopeShifter(model).shift_kv(alone[:, :, :, system.numel() :], system.numel(), start)
    cache = assemble_cache([full[:, :, :, :start], moved], model.config)
    before = cache_slice(cache)
    k = 5
    selection = select_tokens([(start, start + c.numel(), list(range(k)))], by_deviation=True)
    assert isinstance(selection, Selection)
    selection.run(model, cache, torch.cat([system, a, c]))
    after = cache_slice(cache)

    # Layer 0's K/V do not depend on context, so after it every position's layer-1 input
    # is exact: the fresh layer-1 K/V are the full prefill's, and the check ranks tokens
    # by their true layer-1 deviation.
    true = (before[CHECK_LAYER, :, :, start:] - full[CHECK_LAYER, :, :, start:]).square()
    expected = torch.sort(-true.sum(dim=(0, 1, 3)), stable=True).indices[:k] + start
    expected = sorted(expected.tolist())
    for layer in range(CHECK_LAYER + 1):  # every chunk token recomputed up to the check
        torch.testing.assert_close(
            after[layer, :, :, start:], full[layer, :, :, start:], rtol=0, atol=1e-4
        )
    for layer in range(CHECK_LAYER + 1, 4):  # then only the k kept
        changed = (after[layer] != before[layer]).any(dim=(0, 1, 3)).nonzero().flatten()
        assert changed.tolist() == expected
    assert (after[:, :, :, :start] == before[:, :, :, :start]).all()
