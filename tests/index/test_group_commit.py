"""GroupCommitter: a request whose items cannot be committed fails alone (issue 14, defect 3)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from semcached.index.group_commit import GroupCommitter


class Poisoned(ValueError):
    pass


def _merged_group(
    refuse: Callable[[list[int]], bool],
) -> tuple[GroupCommitter[int], list[list[int]], dict[int, BaseException | None]]:
    """Eight submitters; requests 1 to 7 queue behind an open commit of request 0, so
    they share one transaction. The commit raises for the items ``refuse`` names."""
    gate = threading.Event()
    commits: list[list[int]] = []
    written: list[list[int]] = []

    def commit(items: list[int]) -> None:
        if items == [0] and not commits:
            commits.append(items)
            gate.wait()  # hold the first commit open while the others queue
            written.append(items)
            return
        commits.append(items)
        if refuse(items):
            raise Poisoned(f"cannot write {items}")
        written.append(items)

    committer: GroupCommitter[int] = GroupCommitter(commit)
    outcome: dict[int, BaseException | None] = {}

    def submit(i: int) -> None:
        try:
            committer.submit([i])
            outcome[i] = None
        except BaseException as exc:
            outcome[i] = exc

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    while not commits:
        threading.Event().wait(0.001)
    others = [threading.Thread(target=submit, args=(i,)) for i in range(1, 8)]
    for t in others:
        t.start()
    while len(committer._queue) < 7:
        threading.Event().wait(0.001)
    gate.set()
    for t in [first, *others]:
        t.join()
    assert sorted(commits[1]) == list(range(1, 8))  # they did share one transaction
    return committer, written, outcome


def test_a_poisoned_request_fails_alone_and_the_rest_of_its_group_commits() -> None:
    committer, written, outcome = _merged_group(lambda items: 4 in items)
    assert isinstance(outcome[4], Poisoned)
    assert {i for i, err in outcome.items() if err is None} == {0, 1, 2, 3, 5, 6, 7}
    # Everything acknowledged was written, exactly once, in arrival order after the retry.
    flat = [i for items in written for i in items]
    assert sorted(flat) == [0, 1, 2, 3, 5, 6, 7]
    assert committer.requests == 8
    assert committer.commits == 1 + 1 + 7  # the open one, the failed group, seven alone


def test_a_store_fault_fails_each_request_of_the_group_with_its_own_exception() -> None:
    committer, written, outcome = _merged_group(lambda items: True)
    assert outcome[0] is None
    for i in range(1, 8):
        assert isinstance(outcome[i], Poisoned)
        assert str(outcome[i]) == f"cannot write {[i]}"
    assert written == [[0]]
    with pytest.raises(Poisoned):  # the committer carries on: the next caller leads
        committer.submit([8])


def test_interrupts_are_not_retried() -> None:
    calls: list[list[int]] = []

    def commit(items: list[int]) -> None:
        calls.append(items)
        raise KeyboardInterrupt

    committer: GroupCommitter[int] = GroupCommitter(commit)
    with pytest.raises(KeyboardInterrupt):
        committer.submit([1])
    assert calls == [[1]]
