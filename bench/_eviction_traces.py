"""Request traces for bench/eviction.py and libCacheSim runs over them.

Synthetic traces are seeded and have unit sizes; object ids are small non-negative
ints. :func:`libcachesim_miss_ratios` writes a trace as CSV, converts it to
libCacheSim's ``oracleGeneral`` format (which carries each request's next-access
time: libCacheSim's ``Belady`` gives wrong numbers without it) and runs libCacheSim's
policies over it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ANCHORS",
    "LIBCACHESIM_POLICIES",
    "S3FIFO_MIN_CAPACITY",
    "Trace",
    "bursty_trace",
    "libcachesim_miss_ratios",
    "loop_trace",
    "read_trace",
    "scan_trace",
    "shifting_trace",
    "sized_trace",
    "zipf_trace",
]

S3FIFO_MIN_CAPACITY = 20
# Our policy name -> libCacheSim class name.
LIBCACHESIM_POLICIES = {
    "lru": "LRU",
    "arc": "ARC",
    "s3fifo": "S3FIFO",
    "sieve": "Sieve",
    "lirs": "LIRS",
    "wtinylfu": "WTinyLFU",
    "lecar": "LeCaR",
    "cacheus": "Cacheus",
    "lrb": "LRB",
    "glcache": "GLCache",
    "threelcache": "ThreeLCache",
    "belady": "Belady",
}
#: The anchors a row's "best libCacheSim policy" is taken from (Belady is the bound).
ANCHORS = tuple(p for p in LIBCACHESIM_POLICIES if p != "belady")


@dataclass(frozen=True)
class Trace:
    name: str
    keys: list[int]
    sizes: list[int] | None  # None: unit sizes

    def working_set(self) -> int:
        """Distinct objects (unit sizes) or bytes of the distinct objects' last sizes."""
        if self.sizes is None:
            return len(set(self.keys))
        return sum(dict(zip(self.keys, self.sizes, strict=True)).values())


def _zipf_weights(objects: int, alpha: float) -> np.ndarray:
    w = 1.0 / np.arange(1, objects + 1, dtype=np.float64) ** alpha
    return w / w.sum()


def zipf_trace(alpha: float, requests: int, objects: int, seed: int) -> Trace:
    """Independent requests, Zipf(``alpha``) popularity over ``objects`` ids."""
    rng = np.random.default_rng([seed, 1])
    ranks = rng.choice(objects, size=requests, p=_zipf_weights(objects, alpha))
    ids = rng.permutation(objects)[ranks]
    return Trace(f"zipf-{alpha:g}", ids.tolist(), None)


def shifting_trace(
    alpha: float, *, requests: int, objects: int, period: int, hot_change: float, seed: int
) -> Trace:
    """Zipf requests whose hot set changes every ``period`` requests: each time, a
    ``hot_change`` share of the rank -> id map is redrawn from the whole id space."""
    rng = np.random.default_rng([seed, 2])
    p = _zipf_weights(objects, alpha)
    universe = objects * 4
    mapping = rng.choice(universe, size=objects, replace=False)
    out: list[int] = []
    for start in range(0, requests, period):
        n = min(period, requests - start)
        ranks = rng.choice(objects, size=n, p=p)
        out.extend(mapping[ranks].tolist())
        changed = rng.random(objects) < hot_change
        fresh = rng.choice(np.setdiff1d(np.arange(universe), mapping), size=int(changed.sum()))
        mapping = mapping.copy()
        mapping[changed] = fresh
        # Keep ids distinct within the map (a fresh id may repeat: redraw those ranks' ids).
        _, first = np.unique(mapping, return_index=True)
        dup = np.setdiff1d(np.arange(objects), first)
        if len(dup):
            spare = np.setdiff1d(np.arange(universe), mapping)
            mapping[dup] = rng.choice(spare, size=len(dup), replace=False)
    return Trace(f"shifting-{alpha:g}", out, None)


def scan_trace(
    alpha: float, *, requests: int, objects: int, scan_every: int, scan_length: int, seed: int
) -> Trace:
    """Zipf requests interrupted every ``scan_every`` requests by a scan of
    ``scan_length`` ids never seen before and never requested again."""
    rng = np.random.default_rng([seed, 3])
    p = _zipf_weights(objects, alpha)
    ids = rng.permutation(objects)
    out: list[int] = []
    next_scan_id = objects
    while len(out) < requests:
        out.extend(ids[rng.choice(objects, size=scan_every, p=p)].tolist())
        out.extend(range(next_scan_id, next_scan_id + scan_length))
        next_scan_id += scan_length
    return Trace(f"scan-{alpha:g}", out[:requests], None)


def loop_trace(
    alpha: float, *, requests: int, objects: int, loop_length: int, loop_share: float, seed: int
) -> Trace:
    """Zipf requests mixed with a loop: each request is, with probability
    ``loop_share``, the next id of a cyclic scan over ``loop_length`` ids of their
    own (a loop longer than the cache defeats recency), else a Zipf(``alpha``) id."""
    rng = np.random.default_rng([seed, 5])
    zipf_ids = rng.permutation(objects)[
        rng.choice(objects, size=requests, p=_zipf_weights(objects, alpha))
    ]
    in_loop = rng.random(requests) < loop_share
    loop_pos = np.cumsum(in_loop) - 1
    out = np.where(in_loop, objects + loop_pos % loop_length, zipf_ids)
    return Trace(f"loop-{alpha:g}", out.tolist(), None)


def sized_trace(alpha: float, *, requests: int, objects: int, seed: int) -> Trace:
    """Zipf(``alpha``) requests over objects whose sizes are lognormal (median 4 KiB,
    sigma 1.5, within 64 B .. 4 MiB) and independent of popularity: capacity and miss
    ratio are then in bytes and objects respectively, as libCacheSim reports them."""
    rng = np.random.default_rng([seed, 6])
    ids = rng.permutation(objects)[
        rng.choice(objects, size=requests, p=_zipf_weights(objects, alpha))
    ]
    size_of = np.clip(rng.lognormal(np.log(4096), 1.5, size=objects), 64, 4 << 20).astype(np.int64)
    return Trace(f"sized-{alpha:g}", ids.tolist(), size_of[ids].tolist())


def bursty_trace(
    alpha: float, *, requests: int, objects: int, burst_share: float, seed: int
) -> Trace:
    """A Zipf(``alpha``) background with bursts: a ``burst_share`` of the requests
    belong to bursts, each of a new id requested a geometric number of times (mean 6)
    at exponential gaps (mean 200 requests), then never again; bursts overlap."""
    rng = np.random.default_rng([seed, 7])
    n_burst = int(requests * burst_share)
    n_background = requests - n_burst
    lengths: list[int] = []
    while sum(lengths) < n_burst:
        lengths.append(int(rng.geometric(1 / 6)))
    lengths[-1] -= sum(lengths) - n_burst
    lengths = [n for n in lengths if n > 0]
    starts = rng.uniform(0, requests, size=len(lengths))
    times = [
        np.sort(s + np.cumsum(rng.exponential(200.0, size=n))) - 200.0
        for s, n in zip(starts, lengths, strict=True)
    ]
    burst_times = np.concatenate(times)
    burst_ids = np.repeat(np.arange(objects, objects + len(lengths)), lengths)
    background_ids = rng.permutation(objects)[
        rng.choice(objects, size=n_background, p=_zipf_weights(objects, alpha))
    ]
    background_times = np.sort(rng.uniform(0, requests, size=n_background))
    all_ids = np.concatenate([background_ids, burst_ids])
    order = np.argsort(np.concatenate([background_times, burst_times]), kind="stable")
    return Trace(f"bursty-{alpha:g}", all_ids[order].tolist(), None)


def read_trace(path: Path) -> Trace:
    """A CSV trace: ``object_id,size`` lines, or ``object_id`` alone for unit sizes.
    Lines that are empty or start with ``#`` are skipped; so is a header line whose
    first field is not a number."""
    keys: list[int] = []
    sizes: list[int] = []
    sized: bool | None = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if not keys and not fields[0].lstrip("-").isdigit():
            continue  # header
        if sized is None:
            sized = len(fields) >= 2
        try:
            keys.append(int(fields[0]))
            if sized:
                sizes.append(max(int(fields[1]), 1))
        except (ValueError, IndexError):
            raise SystemExit(f"{path}:{n}: expected object_id[,size], got {line!r}") from None
    if not keys:
        raise SystemExit(f"{path}: no requests")
    return Trace(path.stem, keys, sizes if sized else None)


def libcachesim_miss_ratios(
    trace: Trace, capacities: Iterable[int], policies: Sequence[str], workdir: Path
) -> dict[tuple[str, int], float]:
    """Object miss ratios of libCacheSim's policies (our names, see
    :data:`LIBCACHESIM_POLICIES`), each at each capacity (items or bytes).

    The learned anchors run with libCacheSim's defaults (trace time is the request
    index, so GLCache retrains every 86,400 requests), except that LRB and ThreeLCache
    optimise the object miss ratio the table reports. NaN for libCacheSim's S3FIFO
    below 20 slots: its small queue (10 %) is then empty
    and the process aborts, or a single slot and every request misses (0.3.5)."""
    import libcachesim as lcs

    stem = trace.name.replace("/", "_")
    csv = workdir / f"{stem}.csv"
    oracle = workdir / f"{stem}.oracleGeneral.bin"
    sizes = trace.sizes if trace.sizes is not None else [1] * len(trace.keys)
    ids = np.asarray(trace.keys, dtype=np.int64) + 1  # libCacheSim ids start at 1
    np.savetxt(csv, np.c_[np.arange(1, len(ids) + 1), ids, sizes], fmt="%d", delimiter=",")
    params = lcs.ReaderInitParam(has_header=False)
    params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3
    reader = lcs.TraceReader(str(csv), lcs.TraceType.CSV_TRACE, params)
    lcs.Util.convert_to_oracleGeneral(reader._reader, str(oracle))
    reader = lcs.TraceReader(str(oracle), lcs.TraceType.ORACLE_GENERAL_TRACE)
    out: dict[tuple[str, int], float] = {}
    for capacity in capacities:
        for name in policies:
            if name == "s3fifo" and capacity < S3FIFO_MIN_CAPACITY:
                out[name, capacity] = math.nan
                continue
            kwargs: dict[str, str] = {}
            if name in ("lrb", "threelcache"):  # they optimise byte misses by default
                kwargs["objective"] = "object-miss-ratio"
            cache = getattr(lcs, LIBCACHESIM_POLICIES[name])(cache_size=capacity, **kwargs)
            reader.reset()
            obj_miss, _ = cache.process_trace(reader)
            out[name, capacity] = float(obj_miss)
    return out
