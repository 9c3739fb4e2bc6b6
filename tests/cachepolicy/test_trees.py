"""The tree evaluator against LightGBM's own predict, missing values included: both
walks, the compiled one (semcached.ext.treewalk) and its numpy twin, in the same run."""

from __future__ import annotations

from collections.abc import Callable

import lightgbm as lgb
import numpy as np
import pytest

from semcached.cachepolicy import trees as trees_module
from semcached.cachepolicy.trees import TreeEnsemble
from semcached.cachepolicy.verify import TreeVerifier
from semcached.ext.treewalk import Forest


@pytest.fixture(params=[True, False], ids=["compiled", "numpy"])
def accelerated(request: pytest.FixtureRequest) -> bool:
    """Which walk a test runs: the compiled one is built with the package, never skipped."""
    assert trees_module.COMPILED
    flag: bool = request.param
    return flag


def _fitted(objective: str, seed: int, zero_as_missing: bool = False) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 5))
    x[rng.random(x.shape) < 0.15] = np.nan  # missing values to learn a direction for
    x[rng.random(x.shape) < 0.1] = 0.0
    signal = np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) * np.isnan(x[:, 2])
    y = (signal > 0).astype(float) if objective == "binary" else signal
    params = {
        "objective": objective,
        "num_leaves": 7,
        "min_data_in_leaf": 5,
        "verbose": -1,
        "seed": seed,
        "zero_as_missing": zero_as_missing,
    }
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=40)


@pytest.mark.parametrize("objective", ["binary", "regression"])
@pytest.mark.parametrize("zero_as_missing", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_it_predicts_what_lightgbm_predicts(
    objective: str, zero_as_missing: bool, seed: int, accelerated: bool
) -> None:
    booster = _fitted(objective, seed, zero_as_missing)
    trees = TreeEnsemble.from_lightgbm(booster.dump_model())
    rng = np.random.default_rng(seed + 100)
    x = rng.normal(size=(300, 5)) * 2
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.1] = 0.0
    got = trees.predict(x, accelerated=accelerated)
    np.testing.assert_allclose(got, booster.predict(x), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        trees.raw(x, accelerated=accelerated), booster.predict(x, raw_score=True), rtol=1e-9
    )
    for row in x[:20]:  # one row at a time, as a single candidate is verified
        one = trees.predict(row[None, :], accelerated=accelerated)
        np.testing.assert_allclose(one, booster.predict(row[None, :]), rtol=1e-9, atol=1e-12)
    assert (trees.sigmoid is not None) == (objective == "binary")


def test_the_two_walks_agree_on_the_shipped_model() -> None:
    trees = TreeVerifier.load().trees
    rng = np.random.default_rng(7)
    x = rng.normal(size=(500, trees.features)) * 3
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.1] = 0.0
    x[rng.random(x.shape) < 0.05] = -0.0
    x[::7] = rng.choice(trees.threshold, size=x[::7].shape)  # right on split thresholds
    compiled = trees.predict(x, accelerated=True)
    np.testing.assert_allclose(compiled, trees.predict(x, accelerated=False), rtol=1e-12)
    np.testing.assert_array_equal(compiled, trees.predict(x))  # the default is the compiled
    # A strided (non-contiguous) batch and an empty one.
    wide = np.repeat(x[:10], 2, axis=1)[:, ::2]
    np.testing.assert_allclose(trees.predict(wide, accelerated=True), compiled[:10], rtol=1e-12)
    assert trees.predict(x[:0], accelerated=True).shape == (0,)


def test_without_the_extension_the_numpy_walk_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trees_module, "Forest", None)
    booster = _fitted("binary", 1)
    trees = TreeEnsemble.from_lightgbm(booster.dump_model())
    x = np.zeros((3, 5))
    np.testing.assert_allclose(trees.predict(x), booster.predict(x), rtol=1e-9)
    with pytest.raises(RuntimeError, match="treewalk"):
        trees.predict(x, accelerated=True)


def _arrays(trees: TreeEnsemble) -> dict[str, np.ndarray]:
    names = ("feature", "threshold", "left", "right", "default_left", "missing", "value")
    return {n: getattr(trees, n).copy() for n in names} | {"roots": trees.roots.copy()}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: a["left"].__setitem__(0, 10**6), "children"),
        (lambda a: a["right"].__setitem__(0, 0), "children"),  # a loop back to itself
        (lambda a: a["feature"].__setitem__(0, 5), "feature 5"),
        (lambda a: a["missing"].__setitem__(0, 3), "missing type"),
        (lambda a: a["roots"].__setitem__(0, -1), "root"),
        (lambda a: a.__setitem__("value", a["value"][:-1]), "length"),
    ],
)
def test_the_compiled_walk_refuses_arrays_it_could_not_walk_safely(
    damage: Callable[[dict[str, np.ndarray]], None], message: str
) -> None:
    arrays = _arrays(TreeEnsemble.from_lightgbm(_fitted("binary", 1).dump_model()))
    damage(arrays)
    with pytest.raises(ValueError, match=message):
        Forest(**arrays, features=5)


def test_a_single_leaf_model_and_one_row(accelerated: bool) -> None:
    booster = lgb.train(
        {"objective": "binary", "verbose": -1}, lgb.Dataset(np.zeros((10, 2)), np.ones(10)), 3
    )
    trees = TreeEnsemble.from_lightgbm(booster.dump_model())
    row = np.array([[1.0, 2.0]])
    np.testing.assert_allclose(trees.predict(row, accelerated=accelerated), booster.predict(row))


def test_rows_of_the_wrong_width_are_refused(accelerated: bool) -> None:
    trees = TreeEnsemble.from_lightgbm(_fitted("binary", 1).dump_model())
    with pytest.raises(ValueError, match="5 features"):
        trees.predict(np.zeros((1, 4)), accelerated=accelerated)
    with pytest.raises(ValueError, match="5 features"):
        trees.predict(np.zeros(5), accelerated=accelerated)


def test_a_categorical_split_is_refused_at_load() -> None:
    dump = {
        "max_feature_idx": 0,
        "objective": "binary sigmoid:1",
        "tree_info": [
            {
                "tree_structure": {
                    "split_feature": 0,
                    "threshold": "1||2",
                    "decision_type": "==",
                    "default_left": True,
                    "missing_type": "None",
                    "left_child": {"leaf_value": 1.0},
                    "right_child": {"leaf_value": -1.0},
                }
            }
        ],
    }
    with pytest.raises(ValueError, match="numerical"):
        TreeEnsemble.from_lightgbm(dump)
