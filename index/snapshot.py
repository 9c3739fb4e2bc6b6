"""Crash-safe snapshots of in-memory indexes: data files plus a checksummed manifest.

A snapshot at ``path`` is a small JSON manifest (``path`` itself) that names its data
files, which sit beside it as ``<path.name>.<token>.<part>``. Saving writes and fsyncs
fresh data files under a new token, then atomically renames a new manifest over the
old one, fsyncs the directory, and only then deletes the previous generation's files.
A crash at any point leaves either the old or the new snapshot whole, at worst with
orphan files that the next save removes.

The manifest records each file's size and xxh3-128 and a checksum of its own body, so
a truncated, corrupt or mismatched snapshot raises :class:`SnapshotError` on load
instead of producing a subtly wrong index. Checking costs one sequential read of the
data (xxh3 runs at memory speed), which also warms the page cache for the load.

One saver per path at a time (callers serialise saves); loads may run any time.

:func:`open_snapshot` lets a loader check the largest files in background threads
while it parses them (xxh3 releases the GIL; hnswlib's ``load_index`` does not), so a
start costs the longer of the two passes rather than their sum. The loader must not
hand out what it parsed before :meth:`PendingChecks.wait` has passed: until then the
file may be corrupt.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import orjson
import xxhash

from semcached.errors import SemcachedError

__all__ = [
    "SNAPSHOT_FORMAT",
    "PendingChecks",
    "SnapshotError",
    "open_snapshot",
    "read_snapshot",
    "write_snapshot",
]

SNAPSHOT_FORMAT = 1


class SnapshotError(SemcachedError):
    """A snapshot is missing, truncated, corrupt, or does not fit the caller."""


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    """xxh3-128 of the file, hashed straight from its pages (a third faster than reads)."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:  # mmap refuses empty files
            return xxhash.xxh3_128_hexdigest(b"")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as pages:
            return xxhash.xxh3_128_hexdigest(pages)


def _body_checksum(body: Mapping[str, Any]) -> str:
    return xxhash.xxh3_128_hexdigest(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))


def write_snapshot(
    path: Path,
    *,
    kind: str,
    meta: Mapping[str, Any],
    files: Mapping[str, Callable[[Path], None]],
) -> None:
    """Write a snapshot atomically.

    ``files`` maps a part name (``[a-z]+``) to a function that writes that part to the
    path it is given. ``meta`` must be JSON-serialisable. O(size of the data).
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    entries: dict[str, dict[str, Any]] = {}
    written: list[Path] = []
    try:
        for part, writer in files.items():
            if not part.isalpha():
                raise ValueError(f"snapshot part name {part!r} must be letters only")
            target = directory / f"{path.name}.{token}.{part}"
            written.append(target)
            writer(target)
            _fsync_path(target)
            entries[part] = {
                "file": target.name,
                "size": target.stat().st_size,
                "xxh3_128": _digest(target),
            }
        body = {"format": SNAPSHOT_FORMAT, "kind": kind, "meta": dict(meta), "files": entries}
        manifest = orjson.dumps({"body": body, "xxh3_128": _body_checksum(body)})
        tmp = directory / f"{path.name}.{token}.manifest-tmp"
        written.append(tmp)
        with tmp.open("wb") as fh:
            fh.write(manifest)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_path(directory, directory=True)
    except BaseException:
        for leftover in written:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise
    # The new manifest is durable; files of older generations are garbage now.
    keep = {entry["file"] for entry in entries.values()}
    generation = re.compile(re.escape(path.name) + r"\.[0-9a-f]{16}\.[a-z-]+")
    for old in directory.glob(f"{path.name}.*"):
        if old.name not in keep and generation.fullmatch(old.name):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


class PendingChecks:
    """Checksums of snapshot files being computed in background threads."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._threads: list[threading.Thread] = []
        self._failures: list[str] = []

    def start(self, part: str, file: Path, expected: str) -> None:
        def check() -> None:
            try:
                ok = _digest(file) == expected
            except OSError as exc:
                self._failures.append(f"{part} file cannot be read: {exc}")
            else:
                if not ok:
                    self._failures.append(f"{part} file fails its checksum")

        thread = threading.Thread(target=check, name=f"snapshot-check-{part}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        """Block until every check is done; :class:`SnapshotError` if one failed."""
        for thread in self._threads:
            thread.join()
        self._threads = []
        if self._failures:
            raise SnapshotError(f"snapshot {self._path}: {'; '.join(self._failures)}")


def read_snapshot(path: Path, *, kind: str) -> tuple[dict[str, Any], dict[str, Path]]:
    """Verify the snapshot at ``path``; return its ``meta`` and the path of each part.

    Raises :class:`SnapshotError` when the manifest is missing or unreadable, was
    written for another ``kind`` or format, or any data file is missing or differs
    in size or checksum. O(size of the data).
    """
    meta, parts, pending = open_snapshot(path, kind=kind)
    pending.wait()
    return meta, parts


def open_snapshot(
    path: Path, *, kind: str, background: Collection[str] = ()
) -> tuple[dict[str, Any], dict[str, Path], PendingChecks]:
    """:func:`read_snapshot`, but the checksums of the parts named in ``background``
    are computed in threads: call ``wait()`` on the returned checks (it raises
    :class:`SnapshotError`) before trusting those files' contents. Their presence and
    sizes are checked before this returns. Always ``wait()``, also on error paths.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"no snapshot at {path}") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc}") from exc
    try:
        doc = orjson.loads(raw)
        body = doc["body"]
        ok = isinstance(body, dict) and doc["xxh3_128"] == _body_checksum(body)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SnapshotError(f"snapshot manifest {path} is corrupt: {exc}") from exc
    if not ok:
        raise SnapshotError(f"snapshot manifest {path} fails its checksum")
    if body.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(
            f"snapshot {path} has format {body.get('format')!r}, expected {SNAPSHOT_FORMAT}"
        )
    if body.get("kind") != kind:
        raise SnapshotError(f"snapshot {path} holds a {body.get('kind')!r} index, not {kind!r}")
    parts: dict[str, Path] = {}
    pending = PendingChecks(path)
    for part, entry in body["files"].items():
        file = path.parent / entry["file"]
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {path} lacks its {part} file {file.name}") from None
        if size != entry["size"]:
            raise SnapshotError(
                f"snapshot {path}: {part} file is {size} bytes, expected {entry['size']} "
                "(truncated?)"
            )
        parts[part] = file
    for part, file in parts.items():  # sizes first: a short file fails before any thread
        expected = body["files"][part]["xxh3_128"]
        if part in background:
            pending.start(part, file, expected)
        elif _digest(file) != expected:
            pending.wait()
            raise SnapshotError(f"snapshot {path}: {part} file fails its checksum")
    return dict(body["meta"]), parts, pending
