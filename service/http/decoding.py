"""Request structs in, the house's 400s out: msgspec decoding with the error codes clients know.

A :class:`Decoder` decodes one msgspec struct from a JSON body, a JSON header or a
query string, and turns msgspec's errors into :class:`~semcached.errors.BadRequestError`
with the codes and ``field`` values of :class:`~semcached.protocol.codes.ErrorCode`:

=====================================  ===============  ==============================
msgspec says                           code             field
=====================================  ===============  ==============================
not JSON, not UTF-8, empty             invalid_json     --
JSON but not an object                 invalid_json     --
``Object contains unknown field`` x    unknown_field    x
``Object missing required field`` x    missing_field    x
any other value error at ``$.a.b[3]``  ``invalid``      ``a.b`` (indexes dropped)
=====================================  ===============  ==============================

Inside a list of objects (a batch's lookups) the field is the item's own field
(``$.lookups[2].vector`` -> ``vector``), as if the item had been sent alone.
A body nested past msgspec's recursion limit (only a free-form ``msgspec.Raw`` value
can be) is ``invalid_field`` naming the decoder's ``nested_field``.

``invalid`` is ``invalid_field`` unless the decoder names another (the KV metadata
header uses ``invalid_meta``), and ``codes`` gives a path its own code (``chunks[]``:
any item of ``chunks``; ``shape``: the list itself). msgspec reports the first fault
in document order, so a body with several faults names the first one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Generic, TypeVar

import msgspec
from aiohttp import web
from multidict import MultiMapping

from semcached.errors import BadRequestError
from semcached.protocol.codes import ErrorCode
from semcached.service.http.appkeys import SETTINGS
from semcached.service.http.bodies import BodyDeadline, read_all

__all__ = ["Decoder"]

T = TypeVar("T")

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^Object (?P<kind>missing required|contains unknown) field `(?P<name>.*)`$")
_INDEX = re.compile(r"\[[^\]]*\]")


class Decoder(Generic[T]):
    """Decodes and validates a ``type_`` (a msgspec struct); raises a 400 naming the field.

    ``what`` names the source in messages (``request body``, a header's name).
    """

    __slots__ = ("_codes", "_invalid", "_json", "_nested_field", "type", "what")

    def __init__(
        self,
        type_: type[T],
        *,
        what: str = "request body",
        invalid: ErrorCode = ErrorCode.INVALID_FIELD,
        codes: Mapping[str, ErrorCode] | None = None,
        nested_field: str | None = None,
    ) -> None:
        self.type = type_
        self.what = what
        self._invalid = invalid
        self._codes = dict(codes or {})
        self._nested_field = nested_field
        self._json = msgspec.json.Decoder(type_)

    def decode(self, data: bytes | str) -> T:
        """The struct of JSON ``data``."""
        try:
            return self._json.decode(data)
        except msgspec.ValidationError as exc:
            raise self._error(str(exc)) from None
        except msgspec.DecodeError as exc:
            raise BadRequestError(
                ErrorCode.INVALID_JSON, f"{self.what} is not valid JSON: {exc}"
            ) from None
        except RecursionError:  # a free-form value (msgspec.Raw) nested past msgspec's limit
            field = self._nested_field
            where = f"{field}: " if field else f"{self.what}: "
            raise BadRequestError(
                ErrorCode.INVALID_FIELD if field else ErrorCode.INVALID_JSON,
                f"{where}JSON nested too deeply",
                field=field,
            ) from None

    async def read(self, request: web.Request) -> T:
        """The struct of the request's body."""
        # Over the size limit: HTTPRequestEntityTooLarge -> 413; too slow: 408.
        raw = await read_all(request, BodyDeadline.of(request.app[SETTINGS].server))
        if not raw:
            raise BadRequestError(
                ErrorCode.INVALID_JSON, f"{self.what} is empty; expected a JSON object"
            )
        return self.decode(raw)

    def convert(self, query: MultiMapping[str]) -> T:
        """The struct of a query string (numbers parsed from text; a repeated name: the first)."""
        try:
            return msgspec.convert({k: query[k] for k in query}, self.type, strict=False)
        except msgspec.ValidationError as exc:
            raise self._error(str(exc)) from None

    def _error(self, message: str) -> BadRequestError:
        at = _AT.search(message)
        path = at["path"].lstrip(".") if at else ""
        detail = message[: at.start()] if at else message
        named = _NAMED.match(detail)
        if named is not None:
            name = named["name"]
            if named["kind"] == "missing required":
                return BadRequestError(ErrorCode.MISSING_FIELD, f"{name} is required", field=name)
            return BadRequestError(ErrorCode.UNKNOWN_FIELD, f"unknown field {name!r}", field=name)
        if not path:  # the document itself has the wrong type
            return BadRequestError(
                ErrorCode.INVALID_JSON, f"{self.what} must be a JSON object: {detail}"
            )
        field = _INDEX.sub("", path.rsplit("].", 1)[-1])
        code = self._codes.get(_INDEX.sub("[]", path), self._invalid)
        return BadRequestError(code, f"{field}: {detail}", field=field)
