"""SharedExclusiveLock: shared holders together, exclusive alone, writers not starved."""

from __future__ import annotations

import threading
import time

from semcached.index.rwlock import SharedExclusiveLock


def test_shared_holders_share_and_exclusive_waits_for_them() -> None:
    lock = SharedExclusiveLock()
    entered = threading.Event()
    with lock.shared(), lock.shared_nowait() as second:
        assert second  # a second shared holder needs no wait
        writer = threading.Thread(target=lambda: (lock.exclusive().__enter__(), entered.set()))
        writer.start()
        time.sleep(0.05)
        assert not entered.is_set()  # the writer waits for both readers
    writer.join(5)
    assert entered.is_set()


def test_shared_nowait_refuses_at_once_while_a_writer_holds_or_waits() -> None:
    lock = SharedExclusiveLock()
    with lock.exclusive(), lock.shared_nowait() as acquired:
        assert not acquired
    with lock.shared():
        writer = threading.Thread(target=lambda: lock.exclusive().__enter__())
        writer.start()
        while not lock._exclusive_waiting:  # the writer now waits for this reader
            time.sleep(0.001)
        with lock.shared_nowait() as acquired:
            assert not acquired  # a waiting writer goes first
    writer.join(5)
    assert not writer.is_alive()


def test_a_refused_shared_nowait_releases_nothing() -> None:
    lock = SharedExclusiveLock()
    with lock.exclusive(), lock.shared_nowait() as acquired:
        assert not acquired
    with lock.shared_nowait() as acquired:  # the count was not disturbed
        assert acquired
    with lock.exclusive():  # and no shared holder is left behind
        assert lock._shared == 0
