"""LMDB environment: durable writes, map growth up to the cap, the data directory lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import lmdb
import pytest

from semcached.index.datadir import DataDirectory, DataDirLockedError, DataFormatError
from semcached.index.lmdb_env import LmdbEnvironment, StoreFullError

MiB = 1 << 20


def fill(env: LmdbEnvironment, db: object, start: int, count: int, size: int = 4096) -> None:
    def put(txn: lmdb.Transaction) -> None:
        for i in range(start, start + count):
            txn.put(i.to_bytes(8, "big"), b"x" * size, db=db)  # type: ignore[arg-type]

    env.write(put)


def test_map_grows_on_demand(tmp_path: Path) -> None:
    env = LmdbEnvironment(tmp_path / "env", initial_map_bytes=MiB, max_map_bytes=64 * MiB)
    db = env.database(b"docs")
    for batch in range(8):
        fill(env, db, batch * 256, 256)  # 8 MiB in all, far over the initial 1 MiB
    assert env.map_bytes > MiB
    count = env.read(lambda txn: txn.stat(db)["entries"])
    assert count == 8 * 256
    env.close()


def test_write_at_cap_raises_store_full_and_keeps_earlier_data(tmp_path: Path) -> None:
    env = LmdbEnvironment(tmp_path / "env", initial_map_bytes=MiB, max_map_bytes=2 * MiB)
    db = env.database(b"docs")
    fill(env, db, 0, 64)
    with pytest.raises(StoreFullError, match="cap"):
        fill(env, db, 1000, 4096)
    assert env.read(lambda txn: txn.stat(db)["entries"]) == 64  # the failed txn left nothing
    env.close()


def test_ordinary_writes_leave_the_reserve_and_deletes_may_use_it(tmp_path: Path) -> None:
    env = LmdbEnvironment(
        tmp_path / "env", initial_map_bytes=MiB, max_map_bytes=2 * MiB, reserve_bytes=512 * 1024
    )
    db = env.database(b"docs")
    count = 0
    while env.live_bytes() < 2 * MiB - 600 * 1024:
        fill(env, db, count, 8)
        count += 8
    with pytest.raises(StoreFullError, match="kept for deletes"):
        fill(env, db, count, 64)
    assert env.live_bytes() <= 2 * MiB - 512 * 1024
    assert env.read(lambda txn: txn.stat(db)["entries"]) == count  # the refused write left nothing

    def delete(txn: lmdb.Transaction) -> None:
        for i in range(count):
            txn.delete(i.to_bytes(8, "big"), db=db)

    env.write(delete, reclaim=True)
    assert env.read(lambda txn: txn.stat(db)["entries"]) == 0
    env.close()


def test_the_reserve_is_bounded_by_the_cap(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserve_bytes"):
        LmdbEnvironment(
            tmp_path, initial_map_bytes=MiB, max_map_bytes=2 * MiB, reserve_bytes=MiB + 1
        )
    env = LmdbEnvironment(tmp_path, initial_map_bytes=MiB, max_map_bytes=64 * MiB)
    assert env.reserve_bytes == 4 * MiB  # a sixteenth
    env.close()


def test_reopen_adopts_grown_size_and_keeps_data(tmp_path: Path) -> None:
    env = LmdbEnvironment(tmp_path / "env", initial_map_bytes=MiB, max_map_bytes=64 * MiB)
    fill(env, env.database(b"docs"), 0, 1024)
    grown = env.map_bytes
    env.close()
    again = LmdbEnvironment(tmp_path / "env", initial_map_bytes=MiB, max_map_bytes=64 * MiB)
    assert again.map_bytes == grown
    docs = again.database(b"docs")
    assert again.read(lambda txn: txn.stat(docs)["entries"]) == 1024
    again.close()


def test_readers_run_while_map_grows(tmp_path: Path) -> None:
    env = LmdbEnvironment(tmp_path / "env", initial_map_bytes=MiB, max_map_bytes=128 * MiB)
    db = env.database(b"docs")
    fill(env, db, 0, 16)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                value = env.read(lambda txn: txn.get((0).to_bytes(8, "big"), db=db))
                assert value == b"x" * 4096
                time.sleep(0.0005)  # leave the GIL to the writer now and then
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for batch in range(1, 9):
        fill(env, db, batch * 512, 512)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert env.map_bytes >= 16 * MiB
    env.close()


def test_close_is_idempotent(tmp_path: Path) -> None:
    env = LmdbEnvironment(tmp_path / "env", initial_map_bytes=MiB, max_map_bytes=MiB)
    env.close()
    env.close()


def test_data_directory_lock_and_format(tmp_path: Path) -> None:
    first = DataDirectory(tmp_path, initial_map_bytes=MiB, max_map_bytes=8 * MiB)
    first.open()
    second = DataDirectory(tmp_path, initial_map_bytes=MiB, max_map_bytes=8 * MiB)
    with pytest.raises(DataDirLockedError):
        second.open()
    first.close()
    second.open()  # the lock is free again
    second.close()


def test_data_directory_rejects_other_format_version(tmp_path: Path) -> None:
    data = DataDirectory(tmp_path, initial_map_bytes=MiB, max_map_bytes=8 * MiB)
    data.open()
    meta = data.env.database(b"meta")
    data.env.write(lambda txn: txn.put(b"format_version", b"99", db=meta))
    data.close()
    with pytest.raises(DataFormatError, match="format version 99"):
        data.open()
    # A failed open releases everything: the lock can be taken again.
    other = DataDirectory(tmp_path, initial_map_bytes=MiB, max_map_bytes=8 * MiB)
    with pytest.raises(DataFormatError):
        other.open()
