"""The wire bodies: what a client encodes the daemon decodes, and the schemas show the rules."""

from __future__ import annotations

import msgspec
import pytest

from semcached.protocol import (
    CacheCraftStats,
    ChunkPutMeta,
    KvPlanRequest,
    SemanticInsert,
    SemanticLookup,
    SemanticLookupResult,
)
from semcached.protocol.kv import pack_floats, unpack_floats


@pytest.mark.parametrize(
    "body",
    [
        SemanticLookup(namespace="t1", text="hello", partition="m1", threshold=0.9),
        SemanticLookup(namespace="t1", vector=[0.5, 0.25]),
        SemanticInsert(namespace="t1", prompt="p", response=msgspec.Raw(b'{"a":1}'), ttl_s=60.0),
        KvPlanRequest(model="m", chunks=["0" * 32], chunk_tokens=[16], start=4, shm=True),
        ChunkPutMeta(
            model="m",
            dtype="float16",
            shape=(2, 2, 1, 4, 8),
            prefix=["a" * 32],
            prefix_tokens=[3],
            stats=CacheCraftStats(inter=[1.0], intra=2.0, token_scores=pack_floats([0.5] * 4)),
        ),
    ],
)
def test_request_bodies_round_trip(body: msgspec.Struct) -> None:
    raw = msgspec.json.encode(body)
    decoded = msgspec.json.decode(raw, type=type(body))
    assert msgspec.json.encode(decoded) == raw


def test_defaults_are_left_out_of_requests() -> None:
    assert msgspec.json.encode(SemanticLookup(namespace="t1", text="x")) == (
        b'{"namespace":"t1","text":"x"}'
    )


def test_a_miss_has_no_response_keys_and_a_hit_embeds_the_json_as_it_is() -> None:
    miss = SemanticLookupResult(hit=False, category="default", similarity=0.5)
    assert msgspec.json.decode(msgspec.json.encode(miss)) == {
        "hit": False,
        "similarity": 0.5,
        "entry_id": None,
        "age_s": None,
        "category": "default",
        "strategy": None,
        "category_source": "given",
        "category_confidence": None,
        "verifier_score": None,
        "load_level": 0.0,
    }
    hit = SemanticLookupResult(
        hit=True, category="c", strategy="exact", response=msgspec.Raw(b'{"t": [1]}')
    )
    assert b'"response":{"t": [1]}' in msgspec.json.encode(hit)


def test_unknown_fields_are_rejected_in_requests() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `tll_s`"):
        msgspec.json.decode(b'{"namespace": "t1", "tll_s": 1}', type=SemanticLookup)


def test_the_schemas_show_the_constraints() -> None:
    _, components = msgspec.json.schema_components([SemanticLookup, KvPlanRequest, ChunkPutMeta])
    lookup = components["SemanticLookup"]
    assert lookup["additionalProperties"] is False
    assert lookup["required"] == ["namespace"]
    assert lookup["properties"]["namespace"]["pattern"] == "^[A-Za-z0-9_.:\\-]{1,128}$"
    threshold = lookup["properties"]["threshold"]["anyOf"][0]
    assert (threshold["minimum"], threshold["maximum"]) == (-1.0, 1.0)
    plan = components["KvPlanRequest"]["properties"]
    assert plan["chunks"]["items"]["pattern"] == "^[0-9a-f]{32}$"
    assert plan["start"]["minimum"] == 0
    meta = components["ChunkPutMeta"]["properties"]
    assert meta["dtype"]["enum"] == ["bfloat16", "float16", "float32"]
    assert (meta["shape"]["minItems"], meta["shape"]["maxItems"]) == (5, 5)


def test_floats_travel_as_lists_or_base64() -> None:
    assert unpack_floats(pack_floats([0.5, 2.0])).tolist() == [0.5, 2.0]
    assert unpack_floats([1, 2.5]).tolist() == [1.0, 2.5]
    with pytest.raises(ValueError, match="whole float32"):
        unpack_floats("AAA=")
