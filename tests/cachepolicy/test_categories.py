"""Category policies decide hits and lifetimes from numbers alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcached.cachepolicy.categories import (
    DEFAULT_CATEGORY,
    CategoryPolicy,
    CategoryTable,
    UnknownCategoryError,
)
from semcached.errors import BadRequestError, ConfigError
from semcached.service.config import load_settings

POLICY = CategoryPolicy(
    "t", threshold=0.9, ttl_s=100, max_entries=10, max_bytes=1000,
    min_threshold=0.8, max_threshold=0.97, min_ttl_s=10, max_ttl_s=1000,
)  # fmt: skip


@pytest.mark.parametrize(
    ("similarity", "requested", "hit"),
    [
        (0.9, None, True),  # exactly at the threshold is a hit
        (0.8999, None, False),
        (0.85, 0.85, True),  # a looser request inside the bounds
        (0.79, 0.5, False),  # a looser request below the floor is clamped to 0.8
        (0.8, 0.5, True),
        (0.98, 0.999, True),  # a stricter request above the ceiling is clamped to 0.97
        (0.96, 0.999, False),
    ],
)
def test_hit_decision_at_the_boundary(
    similarity: float, requested: float | None, hit: bool
) -> None:
    assert POLICY.is_hit(similarity, requested) is hit


@pytest.mark.parametrize(("requested", "ttl"), [(None, 100), (50, 50), (1, 10), (10**9, 1000)])
def test_ttl_is_clamped(requested: float | None, ttl: float) -> None:
    assert POLICY.ttl(requested) == ttl
    assert POLICY.expires_at(1000.0, requested) == 1000.0 + ttl


def test_expiry_is_inclusive() -> None:
    assert not CategoryPolicy.is_expired(expires_at=10.0, now=9.999)
    assert CategoryPolicy.is_expired(expires_at=10.0, now=10.0)


def test_over_quota() -> None:
    assert not POLICY.over_quota(10, 1000)
    assert POLICY.over_quota(11, 0)
    assert POLICY.over_quota(0, 1001)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1.5},
        {"threshold": 0.4},  # below the default min_threshold of 0.5
        {"ttl_s": 0},
        {"max_ttl_s": float("inf")},
        {"max_entries": 0},
        {"load_min_threshold": 0.95},  # above the threshold
        {"load_min_threshold": 0.4},  # below min_threshold
        {"load_ttl_factor": 0.5},
        {"load_ttl_factor": float("inf")},
        {"load_max_false_hit_rate": 1.0},
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    base = {"threshold": 0.9, "ttl_s": 10.0, "max_entries": 1, "max_bytes": 1}
    with pytest.raises(ValueError, match="category 'x'"):
        CategoryPolicy("x", **{**base, **kwargs})  # type: ignore[arg-type]


def test_default_table_reflects_the_paper() -> None:
    table = CategoryTable()
    code, chat, volatile = (table.resolve(n) for n in ("code", "conversation", "volatile"))
    assert code.threshold > chat.threshold  # dense space needs a stricter threshold
    assert volatile.ttl_s < chat.ttl_s < code.ttl_s  # staleness: minutes to months
    assert table.resolve(None).name == DEFAULT_CATEGORY


def test_unknown_and_disabled_categories_are_400_naming_the_category() -> None:
    table = CategoryTable().with_overrides({"legal": {"enabled": False}})
    with pytest.raises(UnknownCategoryError) as info:
        table.resolve("medical")
    assert isinstance(info.value, BadRequestError)
    assert info.value.status == 400
    assert info.value.field == "category"
    assert "'medical'" in info.value.message
    with pytest.raises(UnknownCategoryError, match="disabled"):
        table.resolve("legal")


def test_overrides_start_new_categories_from_default() -> None:
    table = CategoryTable().with_overrides({"legal": {"threshold": 0.9}})
    legal = table.resolve("legal")
    default = table.resolve(None)
    assert legal.threshold == 0.9
    assert legal.ttl_s == default.ttl_s


def test_categories_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[categories.code]\nthreshold = 0.95\nttl_s = 3600\n"
        "[categories.legal]\nthreshold = 0.91\nmax_entries = 5\n"
    )
    categories = load_settings(config_file=config, environ={}).categories
    assert categories.resolve("code").threshold == 0.95
    assert categories.resolve("code").ttl_s == 3600
    assert categories.resolve("legal").max_entries == 5


def test_load_fields_default_to_off_and_read_from_toml(tmp_path: Path) -> None:
    default = CategoryTable().resolve(None)
    assert default.load_min_threshold is None
    assert default.load_floor == default.threshold
    assert not default.adapts_to_load
    config = tmp_path / "c.toml"
    config.write_text(
        "[categories.factual]\nload_min_threshold = 0.8\nload_ttl_factor = 3.0\n"
        "load_max_false_hit_rate = 0.05\n"
    )
    factual = load_settings(config_file=config, environ={}).categories.resolve("factual")
    assert (factual.load_floor, factual.load_ttl_factor) == (0.8, 3.0)
    assert factual.load_max_false_hit_rate == 0.05
    assert factual.adapts_to_load


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[categories.code]\nthreshhold = 0.9\n", "unknown key 'categories.code.threshhold'"),
        ('[categories.code]\nthreshold = "high"\n', "categories.code.threshold: expected"),
        ("[categories.code]\nthreshold = 1.5\n", "category 'code'"),
        ("[categories.code]\nmax_entries = 1.5\n", "expected an integer"),
        ("[categories.code]\nload_min_threshold = 0.8\n", "min_threshold <= load_min_thr"),
        ('[categories.code]\nload_min_threshold = "x"\n', "load_min_threshold: expected a fin"),
        ("categories = 3\n", "expected [categories.<name>] tables"),
        ("[categories]\ncode = 1\n", "expected a [categories.code] table"),
    ],
)
def test_bad_categories_in_toml(tmp_path: Path, toml: str, fragment: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config, environ={})
    assert fragment in str(info.value)
    assert "config file" in str(info.value)
