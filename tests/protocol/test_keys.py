"""Chunk and variant keys: deterministic across processes, sensitive to every input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from semcached.protocol.keys import (
    KeyFormatError,
    chunk_key,
    key_hex,
    parse_key,
    variant_key,
)

TOKENS = [1, 2, 3, 50_000, 0, 7]


def test_key_is_16_bytes_and_depends_on_every_input() -> None:
    base = chunk_key("m", "tok", "float16", TOKENS)
    assert len(base) == 16
    variants = {
        chunk_key("m2", "tok", "float16", TOKENS),
        chunk_key("m", "tok2", "float16", TOKENS),
        chunk_key("m", "tok", "float32", TOKENS),
        chunk_key("m", "tok", "float16", TOKENS, layout_version=2),
        chunk_key("m", "tok", "float16", TOKENS[:-1]),
        chunk_key("m", "tok", "float16", [*TOKENS[:-1], 8]),
        # field boundaries are length-prefixed: moving a character between fields changes the key
        chunk_key("mt", "ok", "float16", TOKENS),
    }
    assert base not in variants
    assert len(variants) == 7


def test_token_ids_are_hashed_as_int32_whatever_their_container() -> None:
    as_list = chunk_key("m", "t", "float32", TOKENS)
    assert chunk_key("m", "t", "float32", np.array(TOKENS, dtype=np.int64)) == as_list
    assert chunk_key("m", "t", "float32", np.array(TOKENS, dtype=">i4")) == as_list
    assert chunk_key("m", "t", "float32", tuple(TOKENS)) == as_list


def test_out_of_range_token_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="32-bit"):
        chunk_key("m", "t", "float32", [2**31])
    with pytest.raises(ValueError, match="one-dimensional"):
        chunk_key("m", "t", "float32", np.zeros((2, 2), dtype=np.int32))


def test_variant_key_depends_on_order_and_empty_prefix_has_one() -> None:
    a = chunk_key("m", "t", "float32", [1])
    b = chunk_key("m", "t", "float32", [2])
    assert variant_key([a, b]) != variant_key([b, a])
    assert variant_key([]) == variant_key(())
    assert variant_key([]) != variant_key([a])
    with pytest.raises(KeyFormatError):
        variant_key([b"short"])


def test_keys_are_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from semcached.protocol.keys import chunk_key, variant_key\n"
        f"c = chunk_key('m', 'tok', 'float16', {TOKENS!r})\n"
        "print(c.hex(), variant_key([c, c]).hex())\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        outputs.add(done.stdout.strip())
    here = chunk_key("m", "tok", "float16", TOKENS)
    assert outputs == {f"{here.hex()} {variant_key([here, here]).hex()}"}


def test_a_fixed_input_keeps_its_key_across_releases() -> None:
    # The key is part of the wire format: a change here orphans every stored chunk.
    key = chunk_key("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2", "float32", range(8))
    assert key_hex(key) == GOLDEN


GOLDEN = "dc6f18ab5a3a34c5af650c2aaac0bca0"


def test_parse_key_round_trips_and_rejects_bad_text() -> None:
    key = chunk_key("m", "t", "float32", TOKENS)
    assert parse_key(key_hex(key)) == key
    for bad in ("", "xyz", key_hex(key).upper(), key_hex(key)[:-1], key_hex(key) + "0"):
        with pytest.raises(KeyFormatError):
            parse_key(bad)
