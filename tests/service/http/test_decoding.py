"""msgspec's errors become the house's 400s: the code and field table of decoding.py."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest
from multidict import MultiDict

from semcached.errors import BadRequestError
from semcached.protocol.codes import ErrorCode
from semcached.protocol.kv import ChunkPutMeta
from semcached.protocol.semantic import SemanticLookupBatch
from semcached.service.http.decoding import Decoder
from semcached.service.http.kv_puts import PUT_META

BATCH = Decoder(SemanticLookupBatch)


def error(decoder: Decoder[object], raw: bytes | str) -> tuple[str, str | None]:
    with pytest.raises(BadRequestError) as info:
        decoder.decode(raw)
    assert info.value.status == 400
    return info.value.code, info.value.field


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (b"{not json", ErrorCode.INVALID_JSON, None),
        (b'{"lookups": [{"namespace": "t1", "text": "\xff"}]}', ErrorCode.INVALID_JSON, None),
        (b"[]", ErrorCode.INVALID_JSON, None),
        (b"{}", ErrorCode.MISSING_FIELD, "lookups"),
        (b'{"x": 1, "lookups": []}', ErrorCode.UNKNOWN_FIELD, "x"),
        (b'{"lookups": []}', ErrorCode.INVALID_FIELD, "lookups"),
        (b'{"lookups": [1]}', ErrorCode.INVALID_FIELD, "lookups"),
        # Inside an item: the item's own field, as if it had been sent alone.
        (b'{"lookups": [{"text": "a"}]}', ErrorCode.MISSING_FIELD, "namespace"),
        (b'{"lookups": [{"namespace": "t1", "tll": 1}]}', ErrorCode.UNKNOWN_FIELD, "tll"),
        (b'{"lookups": [{"namespace": "a b"}]}', ErrorCode.INVALID_FIELD, "namespace"),
        (b'{"lookups": [{"namespace": "t", "vector": [1, true]}]}', "invalid_field", "vector"),
        (b'{"lookups": [{"namespace": "t", "threshold": 1.5}]}', "invalid_field", "threshold"),
        (b'{"lookups": [{"namespace": "t", "text": " \\n"}]}', "invalid_field", "text"),
    ],
)
def test_errors_name_the_code_and_field(raw: bytes, code: str, field: str | None) -> None:
    assert error(BATCH, raw) == (code, field)


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"colour": "red"}, ErrorCode.UNKNOWN_FIELD, "colour"),
        ({"stats": {"inter": [], "hue": 1}}, ErrorCode.UNKNOWN_FIELD, "hue"),
        ({"model": 5}, ErrorCode.INVALID_FIELD, "model"),
        ({"model": "  "}, ErrorCode.INVALID_FIELD, "model"),
        ({"dtype": "int4"}, ErrorCode.INVALID_META, "dtype"),
        ({"shape": [1, 2, 3, 4]}, ErrorCode.BAD_SHAPE, "shape"),
        ({"shape": [1, 2, 3, 4, 0]}, ErrorCode.BAD_SHAPE, "shape"),
        ({"prefix": "ab"}, ErrorCode.INVALID_META, "prefix"),
        ({"prefix": ["zz"]}, ErrorCode.BAD_KEY, "prefix"),
        ({"rope_base": -1}, ErrorCode.INVALID_META, "rope_base"),
        ({"rope": []}, ErrorCode.INVALID_META, "rope"),
        ({"stats": {"intra": -1.0}}, ErrorCode.INVALID_META, "stats.intra"),
        ({"stats": {"inter": [True]}}, ErrorCode.INVALID_META, "stats.inter"),
    ],
)
def test_the_put_metadata_header_has_its_own_codes(
    changes: dict[str, object], code: str, field: str
) -> None:
    meta = {"model": "m", "dtype": "float32", "shape": [1, 2, 1, 4, 8], **changes}
    assert error(PUT_META, msgspec.json.encode(meta)) == (code, field)


def test_missing_metadata_fields_are_missing_field() -> None:
    assert error(PUT_META, '{"dtype": "float32", "shape": [1, 2, 1, 4, 8]}') == (
        ErrorCode.MISSING_FIELD,
        "model",
    )
    assert PUT_META.decode('{"model": "m", "dtype": "float32", "shape": [1, 2, 1, 4, 8]}') == (
        ChunkPutMeta(model="m", dtype="float32", shape=(1, 2, 1, 4, 8))
    )


class Query(msgspec.Struct):
    n: Annotated[int, msgspec.Meta(ge=1)]
    mode: Literal["a", "b"] = "a"
    x: float | None = None


def test_query_strings_are_parsed_from_text_and_extra_names_ignored() -> None:
    decoder = Decoder(Query, codes={"mode": ErrorCode.BAD_TRANSFER})
    query = decoder.convert(MultiDict([("n", "3"), ("x", "0.5"), ("n", "9"), ("other", "1")]))
    assert query == Query(n=3, x=0.5)  # a repeated name: the first
    for params, code, field in [
        ({"n": "0"}, ErrorCode.INVALID_FIELD, "n"),
        ({"n": "x"}, ErrorCode.INVALID_FIELD, "n"),
        ({}, ErrorCode.MISSING_FIELD, "n"),
        ({"n": "1", "mode": "c"}, ErrorCode.BAD_TRANSFER, "mode"),
    ]:
        with pytest.raises(BadRequestError) as info:
            decoder.convert(MultiDict(params))
        assert (info.value.code, info.value.field) == (code, field)
