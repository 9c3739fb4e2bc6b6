"""Body buffers are reused only when nothing refers to them, within their byte cap."""

from __future__ import annotations

import numpy as np
import pytest

from semcached.service.http.body_buffers import BodyBuffers

KiB = 1 << 10


def body(buffers: BodyBuffers, length: int) -> memoryview:
    """What read_exactly hands a put: the first ``length`` bytes of a taken buffer."""
    with memoryview(buffers.take(length)) as whole:
        return whole[:length]


def test_a_returned_buffer_serves_the_next_body_of_a_similar_size() -> None:
    buffers = BodyBuffers(1024 * KiB)
    first = body(buffers, 64 * KiB)
    first[:5] = b"hello"
    buffer = first.obj
    buffers.give_back(first)
    assert buffers.held_bytes == 64 * KiB
    second = body(buffers, 40 * KiB)
    assert second.obj is buffer
    assert len(second) == 40 * KiB
    assert buffers.reused == 1
    assert buffers.held_bytes == 0


def test_a_much_larger_buffer_is_left_for_a_larger_body() -> None:
    buffers = BodyBuffers(1024 * KiB)
    large = body(buffers, 256 * KiB)
    buffer = large.obj
    buffers.give_back(large)
    small = body(buffers, 16 * KiB)
    assert small.obj is not buffer
    assert buffers.reused == 0
    assert body(buffers, 200 * KiB).obj is buffer


@pytest.mark.parametrize("keep", ["array", "slice"])
def test_a_buffer_something_still_reads_is_never_reused(keep: str) -> None:
    buffers = BodyBuffers(1024 * KiB)
    view = body(buffers, 64 * KiB)
    view[:4] = b"\x01\x02\x03\x04"
    kept = np.frombuffer(view, dtype=np.uint8) if keep == "array" else view[:4]
    buffers.give_back(view)
    assert buffers.held_bytes == 0
    other = body(buffers, 64 * KiB)
    other[:4] = b"\xff\xff\xff\xff"
    assert bytes(kept[:4]) == b"\x01\x02\x03\x04"  # the reader's bytes are untouched


def test_idle_buffers_stay_within_the_cap_oldest_dropped_first() -> None:
    buffers = BodyBuffers(192 * KiB)
    views = [body(buffers, 64 * KiB) for _ in range(4)]
    kept = [v.obj for v in views]
    for v in views:
        buffers.give_back(v)
    assert buffers.held_bytes == 192 * KiB
    assert kept[0].closed
    assert not any(b.closed for b in kept[1:])
    oversized = body(buffers, 256 * KiB)
    big = oversized.obj
    buffers.give_back(oversized)
    assert big.closed
    assert buffers.held_bytes == 192 * KiB


def test_with_no_idle_bytes_nothing_is_kept() -> None:
    buffers = BodyBuffers(0)
    view = body(buffers, 8 * KiB)
    buffer = view.obj
    buffers.give_back(view)
    assert buffer.closed
    assert buffers.held_bytes == 0
    buffers.close()
