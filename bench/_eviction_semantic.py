"""The semantic-cache trace of bench/eviction.py: GPTCache's mock_data queries with
Zipf popularity, replayed through the real in-process SemanticCache (MiniLM
embedding, HNSW, the category threshold). A hit yields the id of the entry that
answered, a miss inserts the prompt and yields the new entry's id; the sequence of
ids is the trace an eviction policy of that category would see. Built once and
cached as a file (needs the ``embed`` extra the first time). The queries are GPTCache's
pairs, vendored in bench/data/gptcache/ (MIT).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import numpy as np
import orjson
from _datasets import GPTCACHE_PAIRS
from _semantic_common import minilm_engine

from semcached.cachepolicy.categories import CategoryTable
from semcached.service.semantic.engine import Insert, Lookup

__all__ = ["semantic_trace"]


async def _replay(texts: list[str], order: list[int], workdir: Path) -> list[int]:
    # The default category's threshold; quotas far above the data (no eviction here).
    table = CategoryTable().with_overrides(
        {"default": {"max_entries": 10**7, "max_bytes": 1 << 40}}
    )
    trace: list[int] = []
    async with minilm_engine(workdir, table) as engine:
        for i in order:
            result = await engine.lookup(Lookup("bench", text=texts[i]))
            if result.hit and result.entry_id is not None:
                trace.append(result.entry_id)
            else:
                inserted = await engine.insert(Insert("bench", texts[i], orjson.dumps(i)))
                trace.append(inserted.entry_id)
    return trace


def semantic_trace(
    cache_file: Path, *, requests: int, alpha: float, seed: int, pairs: Path = GPTCACHE_PAIRS
) -> list[int]:
    """The trace (entry ids), from ``cache_file`` if it was built with the same
    parameters, else built now and written there."""
    params = {"requests": requests, "alpha": alpha, "seed": seed, "pairs": str(pairs)}
    if cache_file.exists():
        cached = orjson.loads(cache_file.read_bytes())
        if cached.get("params") == params:
            return list(cached["trace"])
    rows = orjson.loads(pairs.read_bytes())
    # Each pair is one "question"; a request asks it in either wording.
    texts = [t for r in rows for t in (r["origin"], r["similar"])]
    rng = np.random.default_rng([seed, 4])
    w = 1.0 / np.arange(1, len(rows) + 1, dtype=np.float64) ** alpha
    question = rng.permutation(len(rows))[rng.choice(len(rows), size=requests, p=w / w.sum())]
    wording = rng.integers(0, 2, size=requests)
    order = (2 * question + wording).tolist()
    with tempfile.TemporaryDirectory(prefix="semcached-evict-") as tmp:
        trace = asyncio.run(_replay(texts, order, Path(tmp)))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(orjson.dumps({"params": params, "trace": trace}))
    return trace
