"""The nearest-examples category classifier, by tables of hand-made vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from semcached.cachepolicy.classify import ExampleClassifier

Matrix = NDArray[np.float32]


def vec(*xs: float) -> Matrix:
    v = np.asarray(xs, dtype=np.float32)
    out: Matrix = v / np.linalg.norm(v)
    return out


def rows(*vs: Matrix) -> Matrix:
    return np.stack(vs).astype(np.float32)


# Three categories along three axes of a 4-dimensional space.
AXES = {
    "code": rows(vec(1, 0, 0, 0), vec(1, 0.1, 0, 0), vec(1, 0, 0.1, 0)),
    "factual": rows(vec(0, 1, 0, 0), vec(0.1, 1, 0, 0)),
    "volatile": rows(vec(0, 0, 1, 0)),
}


def classifier(**kw: float) -> ExampleClassifier:
    return ExampleClassifier(AXES, default="default", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "category", "nearest"),
    [
        (vec(1, 0, 0, 0), "code", "code"),
        (vec(0.05, 1, 0, 0), "factual", "factual"),
        (vec(0, 0, 1, 0.1), "volatile", "volatile"),
        # Like none of them (the fourth axis): near-uniform scores, so the default.
        (vec(0, 0, 0, 1), "default", "code"),
    ],
)
def test_clear_cases(query: Matrix, category: str, nearest: str) -> None:
    decision = classifier().classify(query)
    assert (decision.category, decision.nearest) == (category, nearest)
    assert decision.source == ("default" if category == "default" else "inferred")


def test_confidence_is_the_softmax_of_the_mean_of_the_nearest_examples() -> None:
    c = classifier(neighbours=2, scale=10.0)
    q = vec(1, 2, 0.5, 0)
    scores = c.scores(q)
    sims = AXES["code"] @ q
    assert scores["code"] == pytest.approx(float(np.sort(sims)[-2:].mean()), abs=1e-6)
    assert scores["volatile"] == pytest.approx(float((AXES["volatile"] @ q)[0]), abs=1e-6)
    total = sum(math.exp(10.0 * s) for s in scores.values())
    best = max(scores, key=lambda name: scores[name])
    decision = c.classify(q)
    assert decision.nearest == best == "factual"
    assert decision.confidence == pytest.approx(math.exp(10.0 * scores[best]) / total, rel=1e-5)


@pytest.mark.parametrize(
    ("offset", "source"), [(-0.01, "inferred"), (0.0, "inferred"), (0.01, "default")]
)
def test_below_the_floor_goes_to_default(offset: float, source: str) -> None:
    q = vec(0.55, 0.5, 0, 0)  # between code and factual, a little nearer code
    confidence = classifier(min_confidence=0.0).classify(q).confidence
    assert 0.5 < confidence < 0.9
    decision = classifier(min_confidence=confidence + offset).classify(q)
    assert decision.confidence == confidence
    assert decision.source == source
    assert decision.nearest == "code"
    assert decision.category == ("code" if source == "inferred" else "default")


def test_a_tie_goes_to_default_whatever_the_floor() -> None:
    tied = ExampleClassifier(
        {"b": rows(vec(1, 0)), "a": rows(vec(0, 1))}, default="default", min_confidence=0.0
    )
    decision = tied.classify(vec(1, 1))
    assert decision.source == "default"
    assert decision.category == "default"
    assert decision.nearest == "a"  # the first by name: deterministic
    assert decision.confidence == pytest.approx(0.5)


def test_no_examples_means_default() -> None:
    empty = ExampleClassifier({"code": np.empty((0, 4), np.float32)}, default="default")
    assert not empty.enabled
    assert empty.categories == ()
    decision = empty.classify(vec(1, 0, 0, 0))
    assert (decision.category, decision.source, decision.confidence) == ("default", "default", 0)


def test_one_category_with_examples_is_always_confident() -> None:
    only = ExampleClassifier({"code": rows(vec(1, 0))}, default="default")
    decision = only.classify(vec(-1, 0.01))  # opposite, but there is no competitor
    assert (decision.category, decision.confidence) == ("code", 1.0)


def test_more_examples_do_not_outvote_fewer_nearer_ones() -> None:
    many = rows(*(vec(1, 0.3, 0.05 * i) for i in range(20)))
    few = rows(vec(0.3, 1, 0))
    c = ExampleClassifier({"many": many, "few": few}, default="default", neighbours=3)
    assert c.classify(vec(0.4, 1, 0)).category == "few"


def test_huge_scale_does_not_overflow() -> None:
    decision = classifier(scale=1e6).classify(vec(1, 0, 0, 0))
    assert (decision.category, decision.confidence) == ("code", 1.0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"neighbours": 0}, "neighbours"),
        ({"scale": 0.0}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"min_confidence": 1.5}, "min_confidence"),
    ],
)
def test_bad_parameters(kw: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classifier(**kw)


def test_examples_of_different_dimensions_are_refused() -> None:
    with pytest.raises(ValueError, match="dimension"):
        ExampleClassifier({"a": rows(vec(1, 0)), "b": rows(vec(1, 0, 0))}, default="default")
