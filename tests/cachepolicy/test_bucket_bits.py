"""BucketBits: bits learned online from Belady's labels of past windows, from the
past only, and a follower on them that beats LRU where frequency matters."""

from __future__ import annotations

import numpy as np
import pytest

from semcached.cachepolicy.bits import OracleBits
from semcached.cachepolicy.bucket_bits import GAPS, BucketBits, size_class
from semcached.cachepolicy.labels import discard_labels
from semcached.cachepolicy.lru import LruPolicy
from semcached.cachepolicy.onebit import DiscardFollower, QueueFollower
from semcached.cachepolicy.replay import replay


def zipf_keys(seed: int, n: int, objects: int, alpha: float = 1.0) -> list[int]:
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, objects + 1) ** alpha
    keys: list[int] = rng.permutation(objects)[rng.choice(objects, size=n, p=w / w.sum())].tolist()
    return keys


def bits_of(keys: list[int], capacity: int) -> list[bool]:
    bits = BucketBits(background=False, window=2048)
    return [bool(bits.observe(k, 1, None, capacity).bit) for k in keys]


def test_no_bit_is_1_before_the_first_labels() -> None:
    bits = BucketBits(background=False, window=4096)
    out = [bits.observe(k, 1, None, 50).bit for k in zipf_keys(1, 4095, 500)]
    assert not any(out)
    assert not bits.trained


def test_bits_depend_only_on_the_past() -> None:
    """Two traces sharing a prefix get the same bits over it: no access's bit can
    have seen a label of its own future."""
    prefix = zipf_keys(2, 10_000, 800)
    a = bits_of(prefix + zipf_keys(3, 5000, 800), 80)
    b = bits_of(prefix + zipf_keys(4, 5000, 5000), 80)
    assert a[:10_000] == b[:10_000]
    assert any(a[:10_000])  # it did learn something over the prefix


def test_buckets_separate_counts_and_gaps() -> None:
    bits = BucketBits(background=False)
    first = bits.bucket(7, 1)  # tick 1
    second = bits.bucket(7, 1)  # tick 2: gap 1, mean gap 1, one earlier request
    bits.bucket(8, 1)
    third = bits.bucket(7, 1)  # tick 4: gap 2, mean gap 3 // 2 = 1, two earlier
    for other in range(5):
        bits.bucket(100 + other, 1)
    fourth = bits.bucket(7, 1)  # tick 10: gap 6, mean gap 9 // 3 = 3, three earlier
    assert first == 0
    # (count * GAPS + bit length of the gap) * GAPS + bit length of the mean gap
    assert second == (1 * GAPS + 1) * GAPS + 1
    assert third == (2 * GAPS + 2) * GAPS + 1
    assert fourth == (3 * GAPS + 3) * GAPS + 2


def test_size_classes() -> None:
    assert [size_class(s) for s in (1, 511, 512, 2047, 2048, 1 << 30)] == [0, 0, 1, 1, 2, 7]


@pytest.mark.parametrize("seed", range(3))
def test_learned_follower_beats_lru_on_zipf(seed: int) -> None:
    keys = zipf_keys(seed, 60_000, 5000)
    capacity = 250
    follower = QueueFollower(BucketBits(background=False))
    misses = replay(follower, keys, capacity, check=None)
    assert misses < 0.95 * replay(LruPolicy(), keys, capacity)


def test_queue_follower_matches_the_discard_follower() -> None:
    keys = zipf_keys(5, 8000, 600)
    labels = discard_labels(keys, 40)
    for flip in (0.0, 0.3):
        queue = QueueFollower(OracleBits(labels, flip=flip, seed=1))
        skiplist = DiscardFollower(OracleBits(labels, flip=flip, seed=1))
        assert replay(queue, keys, 40, check=queue._check) == replay(skiplist, keys, 40)


def test_sized_bits_label_in_bytes() -> None:
    keys = zipf_keys(6, 30_000, 2000)
    sizes = [64 << (k % 8) for k in keys]
    bits = BucketBits(background=False, sized=True)
    follower = QueueFollower(bits)
    replay(follower, keys, 64 * 200 * 8, sizes, check=follower._check)
    assert bits.sized
    assert bits.trained


def test_background_training_swaps_the_table() -> None:
    bits = BucketBits(background=True, window=2048)
    for k in zipf_keys(8, 6000, 400):
        bits.observe(k, 1, None, 40)
    bits.wait()
    assert bits.trained
    assert bits.labelled >= 1024
