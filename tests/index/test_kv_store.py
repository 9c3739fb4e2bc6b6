"""Variant metadata records and the LMDB disk store of the chunk KV cache."""

from __future__ import annotations

import numpy as np
import pytest

from semcached.index.kv_disk import BlobWrite, KvDiskStore
from semcached.index.kv_meta import VariantMeta, decode_meta, encode_meta
from semcached.index.lmdb_env import LmdbEnvironment
from semcached.protocol.keys import chunk_key, variant_key


def make_meta(tokens: int = 4, prefix_len: int = 2, seed: int = 0) -> VariantMeta:
    rng = np.random.default_rng(seed)
    prefix = tuple(chunk_key("m", "t", "float32", [seed, i]) for i in range(prefix_len))
    return VariantMeta(
        chunk=chunk_key("m", "t", "float32", [seed, 99]),
        variant=variant_key(prefix),
        model="m",
        dtype="float32",
        shape=(2, 2, 1, tokens, 4),
        prefix=prefix,
        prefix_tokens=tuple(range(3, 3 + prefix_len)),
        rope_base=17,
        rope={"theta": 10000.0},
        inter=rng.random(prefix_len).astype(np.float32),
        intra=1.5,
        token_scores=rng.random(tokens).astype(np.float32),
        created_at=123.5,
        hits=3,
        last_access=124.0,
    )


def test_record_round_trip_keeps_every_field() -> None:
    meta = make_meta()
    back = decode_meta(meta.key, encode_meta(meta))
    fields = "chunk variant model dtype shape prefix prefix_tokens rope_base rope intra"
    for name in [*fields.split(), "created_at", "hits", "last_access", "nbytes"]:
        assert getattr(back, name) == getattr(meta, name), name
    np.testing.assert_array_equal(back.inter, meta.inter)
    np.testing.assert_array_equal(back.token_scores, meta.token_scores)
    assert meta.nbytes == 2 * 2 * 1 * 4 * 4 * 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "int8"}, "dtype"),
        ({"shape": (2, 3, 1, 4, 4)}, "shape"),
        ({"shape": (2, 2, 1, 4)}, "shape"),
        ({"prefix_tokens": (3,)}, "prefix_tokens"),
        ({"inter": np.zeros(3, np.float32)}, "inter"),
        ({"token_scores": np.full(4, np.nan, np.float32)}, "token_scores"),
        ({"token_scores": np.full(4, -1, np.float32)}, "token_scores"),
        ({"intra": -1.0}, "intra"),
        ({"rope_base": -1}, "rope_base"),
    ],
)
def test_inconsistent_metadata_is_rejected(change: dict[str, object], message: str) -> None:
    meta = make_meta()
    fields = {name: getattr(meta, name) for name in VariantMeta.__dataclass_fields__}
    del fields["nbytes"]
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        VariantMeta(**fields)  # type: ignore[arg-type]


def test_store_writes_blob_and_meta_together_and_deletes_them(env: LmdbEnvironment) -> None:
    store = KvDiskStore(env)
    a, b = make_meta(seed=1), make_meta(seed=2)
    blob_a, blob_b = b"a" * a.nbytes, b"b" * b.nbytes
    store.write([BlobWrite(a.key, a, blob_a), BlobWrite(b.key, b, blob_b)])
    assert store.read_blob(a.key) == blob_a
    assert store.read_with(b.key, bytes) == blob_b
    assert sorted(m.key for m in store.scan()) == sorted([a.key, b.key])
    # An eviction and a put in one transaction.
    c = make_meta(seed=3)
    store.write([BlobWrite(a.key), BlobWrite(c.key, c, b"c" * c.nbytes)])
    assert store.read_blob(a.key) is None
    assert store.read_with(a.key, bytes) is None
    assert sorted(m.key for m in store.scan()) == sorted([b.key, c.key])
    assert store.orphan_blobs() == []


def test_access_counts_are_saved(env: LmdbEnvironment) -> None:
    store = KvDiskStore(env)
    meta = make_meta()
    store.write([BlobWrite(meta.key, meta, b"x" * meta.nbytes)])
    meta.hits = 41
    store.save_access([meta])
    (back,) = store.scan()
    assert back.hits == 41


def test_a_corrupt_record_is_dropped_at_scan(env: LmdbEnvironment) -> None:
    store = KvDiskStore(env)
    good, bad = make_meta(seed=1), make_meta(seed=2)
    store.write([BlobWrite(good.key, good, b"g" * good.nbytes), BlobWrite(bad.key, bad, b"b")])
    env.write(lambda txn: txn.put(bad.key, b"\x09garbage", db=env.database(b"kv.meta")))
    assert [m.key for m in store.scan()] == [good.key]
    assert store.read_blob(bad.key) is None  # its blob went with it


@pytest.mark.parametrize("rope", ["deep", "huge int"])
def test_metadata_that_cannot_be_stored_fails_its_own_write_only(
    env: LmdbEnvironment, rope: str
) -> None:
    store = KvDiskStore(env)
    bad = make_meta(seed=1)
    bad.rope = {"scaling": _nested(300)} if rope == "deep" else {"factor": 1 << 70}
    with pytest.raises(ValueError, match="rope"):  # raised in the caller, not in a commit
        BlobWrite(bad.key, bad, b"x" * bad.nbytes)
    good = make_meta(seed=2)
    store.write([BlobWrite(good.key, good, b"g" * good.nbytes)])
    assert [m.key for m in store.scan()] == [good.key]


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value
