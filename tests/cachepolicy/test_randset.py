"""RandomSet against a plain set."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from semcached.cachepolicy.randset import RandomSet


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=200))
def test_matches_a_set(ops: list[tuple[bool, int]]) -> None:
    rs, ref = RandomSet(), set()
    rng = random.Random(0)
    for add, key in ops:
        if add:
            rs.add(key)
            ref.add(key)
        else:
            rs.discard(key)
            ref.discard(key)
        rs._check()
        assert set(rs) == ref
        assert len(rs) == len(ref)
        assert all(k in rs for k in ref)
        pick = rs.choice(rng)
        assert (pick is None) == (not ref)
        assert pick is None or pick in ref
        other = rs.choice(rng, exclude=key)
        assert other is None or (other in ref and other != key)
        assert (other is None) == (not (ref - {key}))


def test_choice_is_uniform_and_skips_the_excluded_key() -> None:
    rs = RandomSet()
    for k in range(4):
        rs.add(k)
    rng = random.Random(3)
    counts = {k: 0 for k in range(4)}
    for _ in range(6000):
        pick = rs.choice(rng, exclude=1)
        assert pick is not None
        counts[pick] += 1
    assert counts[1] == 0
    assert all(1700 < counts[k] < 2300 for k in (0, 2, 3))
