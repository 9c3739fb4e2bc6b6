"""The numpy tree evaluator against LightGBM's own predict, missing values included."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from semcached.cachepolicy.trees import TreeEnsemble


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
    objective: str, zero_as_missing: bool, seed: int
) -> None:
    booster = _fitted(objective, seed, zero_as_missing)
    trees = TreeEnsemble.from_lightgbm(booster.dump_model())
    rng = np.random.default_rng(seed + 100)
    x = rng.normal(size=(300, 5)) * 2
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.1] = 0.0
    np.testing.assert_allclose(trees.predict(x), booster.predict(x), rtol=1e-9, atol=1e-12)
    assert (trees.sigmoid is not None) == (objective == "binary")


def test_a_single_leaf_model_and_one_row() -> None:
    booster = lgb.train(
        {"objective": "binary", "verbose": -1}, lgb.Dataset(np.zeros((10, 2)), np.ones(10)), 3
    )
    trees = TreeEnsemble.from_lightgbm(booster.dump_model())
    row = np.array([[1.0, 2.0]])
    np.testing.assert_allclose(trees.predict(row), booster.predict(row))


def test_rows_of_the_wrong_width_are_refused() -> None:
    trees = TreeEnsemble.from_lightgbm(_fitted("binary", 1).dump_model())
    with pytest.raises(ValueError, match="5 features"):
        trees.predict(np.zeros((1, 4)))


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
