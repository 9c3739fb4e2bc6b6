"""Discard and phase labels on hand-made traces."""

from __future__ import annotations

from semcached.cachepolicy.labels import discard_labels, phase_ids, phase_labels


def test_phase_ids_split_at_the_k_plus_first_distinct_key() -> None:
    # k=2: [1 2 1] [3 3 2] [4]
    assert phase_ids([1, 2, 1, 3, 3, 2, 4], 2).tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_phase_labels() -> None:
    # 1 is not in phase 1 -> 1; 2 is in phase 1 -> 0; phase 1's 3 not in phase 2 -> 1;
    # phase 1's 2 not in phase 2 -> 1; the last phase is all ones.
    assert phase_labels([1, 2, 1, 3, 3, 2, 4], 2).tolist() == [
        True, False, True, True, True, True, True,
    ]  # fmt: skip


def test_discard_labels() -> None:
    # k=2: 1 2 miss; 3 evicts 2 (next request of 2 is later than 1's): label of 2's
    # request is 1; 1 hit; 2 evicts 3 or 1 (both never requested again after).
    labels = discard_labels([1, 2, 3, 1, 2], 2).tolist()
    assert labels[1] is True  # 2 evicted before its next request
    assert labels[0] is False  # 1 stays until its next request
    assert labels[3] is True
    assert labels[4] is True
    assert labels[2] is True


def test_sized_discard_labels_mark_items_that_never_fit() -> None:
    labels = discard_labels([1, 2, 1], 5, sizes=[10, 1, 10]).tolist()
    assert labels == [True, True, True]
