"""The zero-copy hand-off on a real GPU: a daemon with its GPU tier, chunks promoted by
repeated device plans, handles opened as tensors here and in a second process, the
lease rule, and the transformers adapter reading reused chunks in GPU memory.

Marked ``gpu``: skipped with a reason where torch sees no CUDA device (scripts/gpu-check
runs them on a CUDA machine)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import urllib3

from semcached.clients import SemcachedClient, put_meta
from semcached.clients.cuda import device_uuid
from semcached.clients.kv import LeaseExpiredError
from semcached.protocol.keys import chunk_key
from tests.daemon import DaemonProcess
from tests.service.kv.kit import TINY

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (torch.cuda.is_available() is False)",
    ),
]

SHAPE = (TINY.layers, 2, TINY.kv_heads, 32, TINY.head_dim)


def config_text(shm_dir: Path, models: str) -> str:
    return (
        f'[kv]\nshm_dir = "{shm_dir}"\nhost_bytes = 8388608\ndisk_bytes = 67108864\n'
        "[kv.gpu]\nmax_bytes = 16777216\nslab_bytes = 8388608\npromote_after_hits = 2\n" + models
    )


@pytest.fixture(scope="module")
def gpu_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("gpu")
    models = (
        f'[kv_models."{TINY.name}"]\nlayers = {TINY.layers}\nkv_heads = {TINY.kv_heads}\n'
        f"head_dim = {TINY.head_dim}\n"
    )
    config = root / "semcached.toml"
    config.write_text(config_text(root, models))
    daemon = DaemonProcess(root / "data", ["--config", str(config)])
    daemon.wait_ready()
    url = daemon.wait_listening()
    gpu = urllib3.request("GET", url + "/v1/kv/stats").json()["gpu"]
    assert gpu["enabled"], f"the daemon's GPU tier is off: {gpu['reason']}"
    yield url, root
    daemon.terminate()


@pytest.fixture
def client(gpu_daemon: tuple[str, Path]) -> Iterator[SemcachedClient]:
    url, shm_dir = gpu_daemon
    with SemcachedClient(url, shm_dir=shm_dir) as c:
        yield c


def key(tag: str, i: int) -> bytes:
    return chunk_key(TINY.name, TINY.tokenizer, "float16", [sum(tag.encode()), i])


def blob(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(SHAPE).astype(np.float16)


def put(client: SemcachedClient, tag: str, n: int) -> list[bytes]:
    keys = [key(tag, i) for i in range(n)]
    for i, k in enumerate(keys):
        client.put_chunk(k, blob(i), put_meta(TINY.name, "float16", SHAPE))
    return keys


def hot_plan(client: SemcachedClient, keys: list[bytes], **kwargs: object):  # type: ignore[no-untyped-def]
    """Plans with the device until the chunks come as CUDA handles (promote_after_hits
    = 2: the first plan hands out shared memory, the second device memory)."""
    first = client.plan(TINY.name, keys, device="cuda:0")
    assert all(c.fetch is not None and c.fetch.cuda is None for c in first.chunks)
    assert all(c.fetch is not None and c.fetch.shm is not None for c in first.chunks)
    assert first.lease is not None
    client.release_lease(first.lease.id)
    second = client.plan(TINY.name, keys, device="cuda:0", **kwargs)  # type: ignore[arg-type]
    for c in second.chunks:
        assert c.fetch is not None
        assert c.fetch.cuda is not None, f"chunk {c.key} not promoted: tier {c.fetch.tier}"
    return second


def test_hot_chunks_open_as_tensors_in_the_daemons_gpu_memory(client: SemcachedClient) -> None:
    keys = put(client, "open", 3)
    plan = hot_plan(client, keys)
    uuid = device_uuid("cuda:0")
    handles = [c.fetch.cuda for c in plan.chunks if c.fetch is not None and c.fetch.cuda]
    assert {h.device for h in handles} == {uuid}
    got = [client.fetch_tensor(c, plan.lease, device="cuda:0") for c in plan.chunks]
    for i, g in enumerate(got):
        assert g.transfer == "cuda"
        assert g.zero_copy
        assert g.tensor.device == torch.device("cuda", 0)
        assert g.tensor.dtype == torch.float16
        assert tuple(g.tensor.shape) == SHAPE
        np.testing.assert_array_equal(g.tensor.cpu().numpy(), blob(i))
    # One slab, one mapping; the tensors lie at the handles' offsets in it: no copies.
    assert len({h.ipc_handle for h in handles}) == 1
    assert client._shm.cuda.mappings == 1
    for g, h in zip(got[1:], handles[1:], strict=True):
        assert g.tensor.data_ptr() - got[0].tensor.data_ptr() == h.offset - handles[0].offset
    assert plan.lease is not None
    client.release_lease(plan.lease.id)


def test_get_tensor_hands_out_the_hot_chunk_and_copies_a_cold_one(
    client: SemcachedClient,
) -> None:
    (k,) = put(client, "get", 1)
    cold = client.get_tensor(k, device="cuda:0")
    assert cold.transfer == "shm"
    assert cold.lease is None  # copied to the device, lease released at once
    hot = client.get_tensor(k, device="cuda:0")
    assert hot.transfer == "cuda"
    assert hot.lease is not None
    np.testing.assert_array_equal(hot.tensor.cpu().numpy(), blob(0))
    np.testing.assert_array_equal(cold.tensor.cpu().numpy(), blob(0))
    client.release_lease(hot.lease.id)


def test_a_handle_opened_after_its_lease_is_a_client_error_not_a_crash(
    client: SemcachedClient,
) -> None:
    keys = put(client, "late", 1)
    plan = hot_plan(client, keys, lease_s=0.2)
    time.sleep(0.4)
    with pytest.raises(LeaseExpiredError):
        client.fetch_tensor(plan.chunks[0], plan.lease, device="cuda:0")
    assert client.ready().ready
    # A fresh plan works again, and so does this process's CUDA context.
    again = client.plan(TINY.name, keys, device="cuda:0")
    got = client.fetch_tensor(again.chunks[0], again.lease, device="cuda:0")
    np.testing.assert_array_equal(got.tensor.cpu().numpy(), blob(0))
    assert again.lease is not None
    client.release_lease(again.lease.id)


_CHILD = """
import hashlib, json, sys
from semcached.clients.cuda import CudaMapper
from semcached.clients.kv import LeaseInfo
from semcached.protocol.kv import KvCudaHandle
doc = json.loads(sys.argv[1])
lease = LeaseInfo(doc["lease"], doc["expires_at"], doc["ttl_s"], float("inf"))
mapper = CudaMapper()
tensor = mapper.tensor(KvCudaHandle(**doc["handle"]), "float16", doc["shape"], lease)
sys.stdout.write(hashlib.sha256(tensor.cpu().numpy().tobytes()).hexdigest())
mapper.close()
"""


def test_a_second_process_reads_the_same_bytes_through_the_handle(
    client: SemcachedClient,
) -> None:
    keys = put(client, "child", 2)
    plan = hot_plan(client, keys, lease_s=60.0)
    assert plan.lease is not None
    mine = client.fetch_tensor(plan.chunks[1], plan.lease, device="cuda:0")  # opened here too
    handle = plan.chunks[1].fetch.cuda  # type: ignore[union-attr]
    assert handle is not None
    doc = {
        "lease": plan.lease.id,
        "expires_at": plan.lease.expires_at,
        "ttl_s": plan.lease.ttl_s,
        "shape": list(SHAPE),
        "handle": {
            "device": handle.device,
            "device_index": handle.device_index,
            "ipc_handle": handle.ipc_handle,
            "offset": handle.offset,
            "length": handle.length,
        },
    }
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(doc)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == hashlib.sha256(blob(1).tobytes()).hexdigest()
    assert hashlib.sha256(mine.tensor.cpu().numpy().tobytes()).hexdigest() == out.stdout
    client.release_lease(plan.lease.id)


# --- the transformers adapter on the GPU --------------------------------------------------


def test_the_adapter_reuses_chunks_in_gpu_memory(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from semcached.clients.hf_adapter import HfKvAdapter
    from semcached.clients.hf_kv import cache_kwargs

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        max_position_embeddings=2048,
        attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).eval().to("cuda:0")
    models = (
        '[kv_models."tiny-gpu"]\nlayers = 2\nkv_heads = 2\nhead_dim = 16\n'
        'alpha = 100.0\ntokenizer = "tiny-tok"\n'
    )
    (tmp_path / "semcached.toml").write_text(config_text(tmp_path, models))
    daemon = DaemonProcess(tmp_path / "data", ["--config", str(tmp_path / "semcached.toml")])
    try:
        daemon.wait_ready()
        with SemcachedClient(daemon.wait_listening(), shm_dir=tmp_path) as client:
            rng = np.random.default_rng(5)
            system, a, b, q = (
                torch.from_numpy(rng.integers(3, 1024, n)).long() for n in (6, 20, 24, 5)
            )
            with torch.no_grad():
                cache = transformers.DynamicCache(config=model.config)
                ids = torch.cat([system, a, b, q]).view(1, -1).to("cuda:0")
                want = model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache)).logits
            want = want[:, -5:]
            rag = HfKvAdapter(client, model, model_id="tiny-gpu", tokenizer_id="tiny-tok")
            first = rag.prefill(system, [a, b], q)
            assert first.stored == (0, 1)
            runs = [rag.prefill(system, [a, b], q) for _ in range(2)]
            assert runs[0].transfers == ("shm", "shm")  # read once: not hot yet
            assert runs[1].transfers == ("cuda", "cuda")  # promoted: read in place
            for run in (first, *runs):
                assert run.logits.device == torch.device("cuda", 0)
                assert float((run.logits - want).abs().max()) < 1e-4
            host = HfKvAdapter(
                client, model, model_id="tiny-gpu", tokenizer_id="tiny-tok", device_handles=False
            )
            copied = host.prefill(system, [a, b], q)
            assert copied.transfers == ("shm", "shm")
            assert float((copied.logits - want).abs().max()) < 1e-4
    finally:
        daemon.terminate()
