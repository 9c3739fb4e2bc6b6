"""Server-sent events: reading an upstream's stream incrementally, writing a replay.

The reader keeps only the unfinished tail of the bytes fed so far, so a stream is
recorded event by event while its bytes are forwarded as they come.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

__all__ = ["DONE", "DONE_EVENT", "SseReader", "encode_event"]

DONE = "[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


def encode_event(data: Mapping[str, Any]) -> bytes:
    """One ``data:`` event of a JSON document (orjson writes no newlines)."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


class SseReader:
    """Feed bytes, get the ``data`` of each complete event (several ``data:`` lines
    join with newlines; comments, ``event:``, ``id:`` and ``retry:`` are skipped)."""

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[str]:
        buffer = self._tail + chunk
        lines = buffer.splitlines(keepends=True)
        self._tail = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        # A CR at the very end may be the first half of a CRLF: wait for the next byte.
        if lines and lines[-1].endswith(b"\r") and not self._tail:
            self._tail = lines.pop()
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                if self._data:
                    yield b"\n".join(self._data).decode("utf-8", "replace")
                    self._data = []
                continue
            field, _, value = line.partition(b":")
            if field == b"data":
                self._data.append(value[1:] if value.startswith(b" ") else value)

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished event."""
        return len(self._tail) + sum(len(d) for d in self._data)
