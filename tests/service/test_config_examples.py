"""Category example prompts and the classification settings in the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcached.cachepolicy.categories import MAX_EXAMPLE_CHARS, MAX_EXAMPLES, CategoryTable
from semcached.errors import ConfigError
from semcached.service.config import load_settings


def load(tmp_path: Path, text: str) -> CategoryTable:
    path = tmp_path / "semcached.toml"
    path.write_text(text)
    return load_settings(config_file=path, environ={}).categories


def test_examples_are_read_per_category(tmp_path: Path) -> None:
    table = load(
        tmp_path,
        '[categories.code]\nexamples = ["Reverse a list in Python", "Fix this, please: a, b"]\n'
        '[categories.legal]\nexamples = ["Is this contract clause enforceable?"]\n',
    )
    # A comma inside an example is part of it: the list is never split.
    assert table.resolve("code").examples == ("Reverse a list in Python", "Fix this, please: a, b")
    assert table.resolve("legal").examples == ("Is this contract clause enforceable?",)
    assert table.resolve("factual").examples == ()


def test_a_new_category_does_not_inherit_the_defaults_examples(tmp_path: Path) -> None:
    table = load(
        tmp_path,
        '[categories.default]\nexamples = ["Summarise this text"]\n'
        "[categories.legal]\nthreshold = 0.9\n",
    )
    assert table.resolve("default").examples == ("Summarise this text",)
    assert table.resolve("legal").examples == ()
    assert table.resolve("legal").ttl_s == table.resolve("default").ttl_s


def quoted(items: list[str]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in items) + "]"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('"one prompt, another"', "categories.code.examples: expected a list of strings"),
        ("[1, 2]", "categories.code.examples: expected a list of strings"),
        ('["ok", "  "]', "examples[1]: must be a non-blank string"),
        (quoted(["x" * (MAX_EXAMPLE_CHARS + 1)]), f"at most {MAX_EXAMPLE_CHARS} characters"),
        (quoted([f"p{i}" for i in range(MAX_EXAMPLES + 1)]), f"examples: at most {MAX_EXAMPLES}"),
        ('["same", "same"]', "each may appear only once"),
    ],
)
def test_bad_examples_name_the_category_and_the_problem(
    tmp_path: Path, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[categories.code]\nexamples = {value}\n")
    message = str(caught.value)
    assert fragment in message
    assert "semcached.toml" in message
    assert "code" in message


def test_classification_settings_from_every_source(tmp_path: Path) -> None:
    path = tmp_path / "semcached.toml"
    path.write_text("[classification]\nmin_confidence = 0.7\nneighbours = 5\n")
    settings = load_settings(
        config_file=path,
        environ={"SEMCACHED_CLASSIFICATION_SCALE": "30"},
        overrides={"classification.neighbours": "2"},
    )
    c = settings.classification
    assert (c.min_confidence, c.neighbours, c.scale) == (0.7, 2, 30.0)
    with pytest.raises(ConfigError, match=r"classification\.min_confidence: must be <= 1"):
        load_settings(environ={"SEMCACHED_CLASSIFICATION_MIN_CONFIDENCE": "1.5"})


def test_examples_show_in_the_redacted_settings(tmp_path: Path) -> None:
    path = tmp_path / "semcached.toml"
    path.write_text('[categories.volatile]\nexamples = ["Bitcoin price now"]\n')
    redacted = load_settings(config_file=path, environ={}).redacted()
    assert redacted["categories"]["volatile"]["examples"] == ("Bitcoin price now",)
    assert redacted["classification"]["min_confidence"] == 0.5
