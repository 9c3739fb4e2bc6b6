"""The transformers KV adapter on a random-initialised tiny Llama (fixed seed, float32,
eager attention): layout round trips, exact prefix reuse, RoPE shifts, Cache-Craft
statistics and the layer-wise partial forward."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from semcached.clients import SemcachedClient, hf_adapter, hf_forward  # noqa: E402
from semcached.clients.hf_adapter import HfKvAdapter  # noqa: E402
from semcached.clients.hf_forward import empty_cache, recompute, recompute_logits  # noqa: E402
from semcached.clients.hf_kv import (  # noqa: E402
    RopeShifter,
    UnsupportedModelError,
    assemble_cache,
    cache_from_kv,
    cache_kwargs,
    cache_slice,
    chunk_kv,
    from_blob,
    prompt_chunks_kv,
    to_blob,
)
from tests.daemon import DaemonProcess  # noqa: E402

torch.set_num_threads(1)

LAYERS, HEADS, KV_HEADS, HIDDEN, VOCAB = 2, 4, 2, 64, 1024
HEAD_DIM = HIDDEN // HEADS


def tiny_model(seed: int = 0, **overrides: object) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    settings: dict[str, object] = {
        "hidden_size": HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "attn_implementation": "eager",
    }
    settings.update(overrides)
    config = transformers.LlamaConfig(**settings)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model() -> transformers.LlamaForCausalLM:
    return tiny_model()


def ids(seed: int, n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(3, VOCAB, n)).long()


def prefill(model: transformers.LlamaForCausalLM, tokens: torch.Tensor, cache=None):  # type: ignore[no-untyped-def]
    cache = cache if cache is not None else transformers.DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(input_ids=tokens.view(1, -1), use_cache=True, **cache_kwargs(model, cache))
    return out.logits, cache


# --- layout ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_blob_layout_round_trips(model: transformers.LlamaForCausalLM, dtype: str) -> None:
    _, cache = prefill(model, ids(1, 20))
    kv = cache_slice(cache, 5, 12)
    assert tuple(kv.shape) == (LAYERS, 2, KV_HEADS, 7, HEAD_DIM)
    torch.testing.assert_close(kv[1, 0], cache.layers[1].keys[0, :, 5:12], rtol=0, atol=0)
    torch.testing.assert_close(kv[0, 1], cache.layers[0].values[0, :, 5:12], rtol=0, atol=0)
    blob = to_blob(kv, dtype)
    assert blob.flags.c_contiguous
    assert blob.nbytes == kv.numel() * {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    blob.flags.writeable = False  # as a shared-memory view comes
    back = from_blob(blob, dtype)
    assert (
        back.dtype
        == {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    )
    assert back.data_ptr() == blob.ctypes.data  # no copy
    torch.testing.assert_close(back.float(), kv.to(back.dtype).float(), rtol=0, atol=0)


def test_prefix_reuse_through_a_blob_is_exact(model: transformers.LlamaForCausalLM) -> None:
    a, b = ids(2, 48), ids(3, 16)
    full, _ = prefill(model, torch.cat([a, b]))
    _, cache_a = prefill(model, a)
    stored = to_blob(cache_slice(cache_a), "float32")
    reused = cache_from_kv(from_blob(stored), model.config)
    logits_b, _ = prefill(model, b, reused)
    assert float((logits_b[0] - full[0, 48:]).abs().max()) == 0.0


def test_the_cache_goes_in_by_the_new_argument_name(model: transformers.LlamaForCausalLM) -> None:
    cache = transformers.DynamicCache(config=model.config)
    assert cache_kwargs(model, cache) == {"cache": cache}  # transformers 5.24 renamed it

    class Legacy:
        def forward(self, input_ids: object, past_key_values: object = None) -> None: ...

    assert list(cache_kwargs(Legacy(), cache)) == ["past_key_values"]


def test_assembled_chunks_equal_the_cache_they_came_from(
    model: transformers.LlamaForCausalLM,
) -> None:
    _, cache = prefill(model, ids(4, 30))
    parts = [cache_slice(cache, 0, 10), cache_slice(cache, 10, 25), cache_slice(cache, 25, 30)]
    assembled = assemble_cache(parts, model.config)
    assert assembled.get_seq_length() == 30
    for mine, theirs in zip(assembled.layers, cache.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys)
        assert torch.equal(mine.values, theirs.values)
    assembled.layers[0].keys.zero_()  # a copy: the source is untouched
    assert cache.layers[0].keys.abs().sum() > 0


# --- RoPE -----------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1, 37, 300])
def test_rope_shift_matches_keys_computed_at_the_new_position(
    model: transformers.LlamaForCausalLM, shift: int
) -> None:
    tokens = ids(5, 24)
    at_zero = cache_slice(prefill(model, tokens)[1])
    # Layer-0 keys depend only on each token's embedding and position: the same tokens
    # after `shift` filler tokens have layer-0 keys at positions shift + t.
    _, later = prefill(model, torch.cat([ids(6, shift), tokens]))
    expected = cache_slice(later, shift)[0, 0]
    shifter = RopeShifter(model)
    moved = shifter.shift_keys(at_zero[0, 0], 0, shift)
    assert float((moved - expected).abs().max()) < 1e-4
    assert float((at_zero[0, 0] - expected).abs().max()) > 1e-2  # the shift mattered
    back = shifter.shift_kv(shifter.shift_kv(at_zero, 0, shift), shift, 0)
    torch.testing.assert_close(back, at_zero, rtol=0, atol=1e-5)
    assert torch.equal(shifter.shift_kv(at_zero, 0, shift)[:, 1], at_zero[:, 1])  # values


def test_rope_types_that_do_not_shift_exactly_are_refused() -> None:
    yarn = tiny_model(
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 2.0,
            "original_max_position_embeddings": 1024,
        }
    )
    with pytest.raises(UnsupportedModelError, match="yarn"):
        RopeShifter(yarn)
    linear = tiny_model(
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    )
    RopeShifter(linear)  # a pure rotation with scaled frequencies: accepted


# --- Cache-Craft statistics -----------------------------------------------------------


def test_chunk_statistics_follow_the_attention(model: transformers.LlamaForCausalLM) -> None:
    system, c1, c2, c3 = ids(7, 5), ids(8, 12), ids(9, 9), ids(10, 14)
    computed, cache = prompt_chunks_kv(model, system, [c1, c2, c3])
    assert [c.rope_base for c in computed] == [5, 17, 26]
    assert [c.prefix_tokens for c in computed] == [(), (12,), (12, 9)]
    last = computed[2]
    assert last.tokens == 14
    assert last.inter.shape == (2,)
    assert last.token_scores.shape == (14,)
    # Each row of attention sums to 1: per token, system + prefix chunks + own chunk.
    attended = last.inter.sum() + last.intra
    assert 0 < attended <= 14 + 1e-4
    assert last.token_scores.sum() == pytest.approx(last.inter.sum(), rel=1e-5)
    assert (last.token_scores >= 0).all()
    assert (last.token_scores <= 1 + 1e-6).all()
    # Reference: the layer- and head-averaged attention from output_attentions=True.
    with torch.no_grad():
        out = model(input_ids=torch.cat([system, c1, c2, c3]).view(1, -1), output_attentions=True)
    mean = torch.stack([a[0].mean(0) for a in out.attentions]).mean(0).double().numpy()
    rows = mean[26:40]
    np.testing.assert_allclose(last.inter, [rows[:, 5:17].sum(), rows[:, 17:26].sum()], rtol=1e-5)
    assert last.intra == pytest.approx(rows[:, 26:40].sum(), rel=1e-6)
    np.testing.assert_allclose(last.token_scores, rows[:, 5:26].sum(axis=1), rtol=1e-5)
    # The first chunk has no prefix chunk: only the system prompt before it.
    assert computed[0].inter.shape == (0,)
    assert float(computed[0].token_scores.sum()) == 0.0
    # K/V are the full prefill's at the chunk's positions.
    assert torch.equal(last.kv, cache_slice(cache, 26, 40))
    single = chunk_kv(model, system, [c1, c2], c3)
    assert torch.equal(single.kv, last.kv)
    assert single.intra == last.intra


def test_statistics_need_no_eager_configuration(model: transformers.LlamaForCausalLM) -> None:
    sdpa = tiny_model(attn_implementation="sdpa")
    system, c1, c2 = ids(11, 4), ids(12, 8), ids(13, 8)
    got = chunk_kv(sdpa, system, [c1], c2)
    want = chunk_kv(model, system, [c1], c2)  # same seed, same weights
    np.testing.assert_allclose(got.inter, want.inter, rtol=1e-5)
    assert sdpa.config._attn_implementation == "sdpa"  # restored


# --- the layer-wise partial forward ---------------------------------------------------


def test_recomputing_every_position_is_the_models_forward(
    model: transformers.LlamaForCausalLM,
) -> None:
    tokens = ids(14, 40)
    want, want_cache = prefill(model, tokens)
    cache = empty_cache(model, 40)
    got = recompute_logits(model, cache, tokens, range(40))
    assert float((got - want).abs().max()) < 1e-5
    for mine, theirs in zip(cache.layers, want_cache.layers, strict=True):
        assert float((mine.keys - theirs.keys).abs().max()) < 1e-5
        assert float((mine.values - theirs.values).abs().max()) < 1e-5
    hidden = recompute(model, empty_cache(model, 40), tokens, range(40))
    with torch.no_grad():
        base = model.model(input_ids=tokens.view(1, -1)).last_hidden_state
    assert float((hidden - base).abs().max()) < 1e-5


def test_recomputing_a_whole_reused_chunk_reproduces_full_prefill(
    model: transformers.LlamaForCausalLM,
) -> None:
    system, a, c, question = ids(15, 6), ids(16, 20), ids(17, 16), ids(18, 5)
    full_logits, full = prefill(model, torch.cat([system, a, c, question]))
    _, prefix = prefill(model, torch.cat([system, a]))  # reused exactly (prefix caching)
    alone = cache_slice(prefill(model, c)[1])  # c computed with no context, at position 0
    start = 26
    moved = RopeShifter(model).shift_kv(alone, 0, start)
    cache = assemble_cache([cache_slice(prefix), moved], model.config)
    before = cache_slice(cache, start, start + 16)
    assert float((before - cache_slice(full, start, start + 16)).abs().max()) > 1e-2
    recompute(model, cache, c, range(start, start + 16))
    assert float((cache_slice(cache) - cache_slice(full, 0, 42)).abs().max()) < 1e-3
    logits, _ = prefill(model, question, cache)
    assert float((logits[0] - full_logits[0, 42:]).abs().max()) < 1e-3


def test_only_the_requested_positions_are_recomputed(model: transformers.LlamaForCausalLM) -> None:
    system, a, c = ids(19, 4), ids(20, 12), ids(21, 16)
    _, prefix = prefill(model, torch.cat([system, a]))
    alone = cache_slice(prefill(model, c)[1])
    cache = assemble_cache(
        [cache_slice(prefix), RopeShifter(model).shift_kv(alone, 0, 16)], model.config
    )
    before = cache_slice(cache)
    chosen = [17, 20, 21, 30]  # chunk-relative 1, 4, 5, 14
    recompute(model, cache, c[[1, 4, 5, 14]], chosen)
    after = cache_slice(cache)
    changed = (after != before).any(dim=-1)  # [L, 2, H, T]
    per_position = changed.any(dim=(0, 1, 2))
    assert per_position.nonzero().flatten().tolist() == chosen
    # Layer 0's fresh K/V depend only on token and position: equal to the full prefill's.
    _, full = prefill(model, torch.cat([system, a, c]))
    for p in chosen:
        torch.testing.assert_close(
            after[0, :, :, p], cache_slice(full)[0, :, :, p], rtol=0, atol=1e-5
        )


def test_partial_forward_refuses_bad_positions(model: transformers.LlamaForCausalLM) -> None:
    cache = empty_cache(model, 8)
    with pytest.raises(ValueError, match="ascending"):
        recompute(model, cache, ids(22, 2), [3, 3])
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        recompute(model, cache, ids(22, 2), [3, 8])
    with pytest.raises(ValueError, match="token ids"):
        recompute(model, cache, ids(22, 3), [3, 4])


# --- end to end through a daemon ------------------------------------------------------

ALPHAS = {"tiny-llama-exact": 100.0, "tiny-llama-half": 1.0, "tiny-llama-naive": 0.0}


@pytest.fixture(scope="module")
def rag_daemon(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("rag")
    models = "".join(
        f'[kv_models."{name}"]\nlayers = {LAYERS}\nkv_heads = {KV_HEADS}\n'
        f'head_dim = {HEAD_DIM}\nalpha = {alpha}\ntokenizer = "tiny-tok"\n'
        for name, alpha in ALPHAS.items()
    )
    config = root / "semcached.toml"
    config.write_text(
        f'[kv]\nshm_dir = "{root}"\nhost_bytes = 4194304\ndisk_bytes = 33554432\n{models}'
    )
    daemon = DaemonProcess(root / "data", ["--config", str(config)])
    daemon.wait_ready()
    yield daemon.wait_listening(), root
    daemon.terminate()


@pytest.fixture
def client(rag_daemon):  # type: ignore[no-untyped-def]
    url, shm_dir = rag_daemon
    with SemcachedClient(url, shm_dir=shm_dir) as c:
        yield c


def full_logits(model: transformers.LlamaForCausalLM, *parts: torch.Tensor) -> torch.Tensor:
    return prefill(model, torch.cat(parts))[0]


def test_first_prompt_stores_its_chunks_and_a_repeat_reuses_them_exactly(
    model: transformers.LlamaForCausalLM, client: SemcachedClient
) -> None:
    rag = HfKvAdapter(client, model, model_id="tiny-llama-exact", tokenizer_id="tiny-tok")
    system, a, b, q = ids(30, 6), ids(31, 20), ids(32, 24), ids(33, 5)
    want = full_logits(model, system, a, b, q)[:, -5:]
    first = rag.prefill(system, [a, b], q)
    assert first.stored == (0, 1)
    assert first.reused == ()
    # The same sums in other matmul shapes: equal up to float rounding, not bit for bit.
    assert float((first.logits - want).abs().max()) < 1e-5
    meta = client.get_chunk(rag.key(b), transfer="http").meta
    assert meta.prefix == (rag.key(a).hex(),)
    assert meta.rope_base == 26
    assert meta.prefix_tokens == (20,)

    fetched = []
    original = client.fetch

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        chunk = original(*args, **kwargs)
        fetched.append(chunk.zero_copy)
        return chunk

    client.fetch = spy  # type: ignore[method-assign]
    again = rag.prefill(system, [a, b], q)
    assert again.stored == ()
    assert again.reused == (0, 1)
    assert again.recomputed == ()  # exact prefixes: nothing to fix
    assert fetched == [True, True]  # same host: shared-memory views
    assert float((again.logits - want).abs().max()) < 1e-5
    assert again.cache.get_seq_length() == 6 + 20 + 24 + 5
    # Greedy decoding on the reused cache follows the model's own greedy decoding.
    expected = []
    cache = transformers.DynamicCache(config=model.config)
    logits = prefill(model, torch.cat([system, a, b, q]), cache)[0]
    for _ in range(6):
        expected.append(int(logits[0, -1].argmax()))
        logits = prefill(model, torch.tensor(expected[-1:]), cache)[0]
    assert rag.generate(system, [a, b], q, max_new_tokens=6) == expected


def test_reordered_chunks_recompute_what_the_plan_says(
    model: transformers.LlamaForCausalLM, client: SemcachedClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, a, b, q = ids(40, 5), ids(41, 16), ids(42, 20), ids(43, 4)
    want = full_logits(model, system, b, a, q)[:, -4:]
    results = {}
    for name in ALPHAS:
        rag = HfKvAdapter(client, model, model_id=name, tokenizer_id="tiny-tok")
        rag.prefill(system, [a, b], q)  # stores a after [], b after [a]
        calls: list[list[int]] = []
        real = hf_adapter.recompute

        def spy(*args, calls=calls, real=real):  # type: ignore[no-untyped-def]
            calls.append(list(args[3]))  # (model, cache, token_ids, positions)
            return real(*args)

        monkeypatch.setattr(hf_adapter, "recompute", spy)
        result = rag.prefill(system, [b, a], q)  # both hit, neither after its old prefix
        monkeypatch.undo()
        assert result.reused == (0, 1)
        planned = [5 + r for r in result.plan.chunks[0].recompute]
        planned += [25 + r for r in result.plan.chunks[1].recompute]
        assert list(result.recomputed) == planned
        assert calls == ([planned] if planned else [])
        results[name] = (len(planned), float((result.logits - want).abs().max()))

    assert results["tiny-llama-exact"][0] == 36  # alpha large: every chunk token
    assert results["tiny-llama-exact"][1] < 1e-3
    assert results["tiny-llama-naive"][0] == 0  # alpha 0: plain shifted reuse
    assert results["tiny-llama-naive"][1] > 1e-3  # and it shows
    assert 0 < results["tiny-llama-half"][0] < 36


def test_check_deviation_recomputes_the_plans_count_chosen_by_deviation(
    model: transformers.LlamaForCausalLM, client: SemcachedClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, a, b, q = ids(50, 5), ids(51, 16), ids(52, 20), ids(53, 4)
    want = full_logits(model, system, b, a, q)[:, -4:]
    rag = HfKvAdapter(
        client, model, model_id="tiny-llama-exact", tokenizer_id="tiny-tok", check_deviation=True
    )
    rag.prefill(system, [a, b], q)  # stores a after [], b after [a]
    seen: list[tuple[list[int], int]] = []
    real = hf_forward.recompute

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        seen.append((list(args[3]), out.shape[1]))  # positions in, tokens kept to the end
        return out

    monkeypatch.setattr(hf_forward, "recompute", spy)
    result = rag.prefill(system, [b, a], q)  # both moved; alpha 100 plans every token
    monkeypatch.undo()
    assert result.reused == (0, 1)
    planned = len(result.plan.chunks[0].recompute) + len(result.plan.chunks[1].recompute)
    assert planned == 36
    # Every token of both chunks checked; as many kept as the plan names (here all).
    assert seen == [(list(range(5, 41)), 36)]
    assert float((result.logits - want).abs().max()) < 1e-3
