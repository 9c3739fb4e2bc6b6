"""Group commit in the document store: durable inserts/s with and without it.

N threads each insert ``--docs`` small documents, one ``put_many`` call per document
(as concurrent HTTP inserts arrive), into a fresh LMDB environment; every call returns
only after its data is durable. Without group commit every call is one transaction
and one fsync; with it, calls that arrive while a commit runs share the next one.

    python bench/group_commit.py [--threads 1 4 8 16] [--docs 1000] [--dir DIR]

Use a directory on the disk the daemon will use: on tmpfs an fsync costs nothing.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import lmdb
import numpy as np

from semcached.index.docstore import Document, DocumentStore
from semcached.index.lmdb_env import LmdbEnvironment

T = TypeVar("T")
DIM = 384


class CountingEnvironment(LmdbEnvironment):
    """Counts write transactions: each durable commit is one fsync."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.commits = 0
        self._count_lock = threading.Lock()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        result = super().write(fn)
        with self._count_lock:
            self.commits += 1
        return result


def run(root: Path, threads: int, docs: int, *, group: bool) -> tuple[float, int]:
    path = Path(tempfile.mkdtemp(dir=root))
    env = CountingEnvironment(path, initial_map_bytes=64 << 20, max_map_bytes=8 << 30)
    store = DocumentStore(env, group_commit=group)
    vector = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        barrier.wait()
        try:
            for i in range(docs):
                entry_id = 1 + t * docs + i
                doc = Document(
                    entry_id=entry_id,
                    namespace="bench",
                    category="default",
                    partition="",
                    model="m",
                    prompt=f"prompt number {entry_id}",
                    response=b'{"answer": "a short cached response"}',
                    response_format="json",
                    created_at=0.0,
                    expires_at=1e12,
                    hit_count=0,
                    last_hit_at=0.0,
                    vector_dim=DIM,
                )
                store.put_many([(doc, vector)])
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    assert store.count() == threads * docs
    env.close()
    shutil.rmtree(path)
    return threads * docs / elapsed, env.commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--docs", type=int, default=1000, help="documents per thread")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"{args.docs} one-document put_many calls per thread, {DIM}-d vectors, in {args.dir}")
    print(
        f"{'threads':>7} | {'mode':<12} | {'inserts/s':>10} | {'fsyncs':>7} | "
        f"{'docs/fsync':>10} | {'speed-up':>8}"
    )
    print("-" * 70)
    for threads in args.threads:
        base_rate = 0.0
        for group in (False, True):
            rate, commits = run(args.dir, threads, args.docs, group=group)
            base_rate = base_rate or rate
            mode = "group commit" if group else "one txn/call"
            print(
                f"{threads:>7} | {mode:<12} | {rate:>10.0f} | {commits:>7} | "
                f"{threads * args.docs / commits:>10.1f} | {rate / base_rate:>7.2f}x"
            )


if __name__ == "__main__":
    main()
