"""How well the nearest-examples classifier assigns categories, and at what confidence.

The classifier's examples come from a config file (``--config``; by default the example
``[categories.*]`` tables of the README's "Category classification" section). The
prompts it is scored on are built here from templates and fillers written for this
bench, none of them an example: code questions, small talk, factual questions and
questions about volatile data (prices, weather, scores), plus prompts that belong to
none of these (translation, summarising, rewriting) whose right answer is ``default``.
They are synthetic, so the numbers say how the rule behaves, not how a given product's
traffic would classify; bring labelled prompts of your own with ``--prompts``, a JSON
array of ``{"text", "category"}``.

For each confidence floor it prints the coverage (the share of the categorised prompts
served under a category other than ``default``), the accuracy of those, and how many
of the uncategorised prompts were wrongly given a category other than ``default``;
then the confusion table at the configured floor, the mean confidence of right and
wrong answers, and the time the pure decision takes per prompt (the embedding is the
lookup's own, so it is not counted).

    python bench/category_classify.py
    python bench/category_classify.py --config my.toml --prompts labelled.json

Needs the ``embed`` extra (MiniLM).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson

from semcached.cachepolicy.categories import DEFAULT_CATEGORY
from semcached.cachepolicy.classify import ExampleClassifier
from semcached.service.config import EmbeddingSettings, Settings, load_settings
from semcached.service.semantic.embedding import create_embedder

README = Path(__file__).resolve().parents[1] / "README.md"
FLOORS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# (category, templates, fillers): each template is filled with each filler.
_TEMPLATES: list[tuple[str, list[str], list[str]]] = [
    (
        "code",
        [
            "How do I {} in Go?",
            "Show me how to {} with TypeScript.",
            "What is the fastest way to {} in Rust?",
        ],
        [
            "read a CSV file",
            "merge two dictionaries",
            "make an HTTP request with a timeout",
            "deduplicate a slice",
            "write a unit test for a function",
        ],
    ),
    (
        "code",
        ["My {} fails with '{}'. How do I fix it?"],
        [],  # filled from _ERRORS below
    ),
    (
        "conversation",
        ["{}"],
        [
            "Hello there, nice to meet you!",
            "I'm bored, entertain me.",
            "Do you ever get tired of answering questions?",
            "Haha, that's hilarious.",
            "Sorry, I was in a bad mood earlier.",
            "Can you recommend a good book to relax with?",
            "I just got a new puppy!",
            "What's your favourite colour?",
            "Wish me luck for my exam tomorrow.",
            "See you later, have a nice evening.",
        ],
    ),
    (
        "factual",
        ["What is the capital of {}?", "What language is spoken in {}?"],
        ["Canada", "Kenya", "Peru", "Norway", "Vietnam"],
    ),
    (
        "factual",
        ["Who {}?"],
        [
            "discovered penicillin",
            "invented the telephone",
            "composed the Moonlight Sonata",
            "was the first person to walk on the Moon",
            "developed the theory of general relativity",
        ],
    ),
    (
        "volatile",
        ["What is the price of {} right now?", "How much is {} trading at today?"],
        ["Ethereum", "Tesla shares", "crude oil", "silver", "the Japanese yen"],
    ),
    (
        "volatile",
        ["Will it snow in {} tonight?", "What's the temperature in {} at the moment?"],
        ["Chicago", "Oslo", "Madrid", "Tokyo", "Toronto"],
    ),
    (
        DEFAULT_CATEGORY,
        ["{}"],
        [
            "Translate 'where is the train station' into German.",
            "Summarise the following paragraph in two sentences.",
            "Rewrite this email so it sounds more polite.",
            "Give me three title ideas for a blog post about gardening.",
            "Proofread this sentence: their going to the park tomorow.",
            "Turn these notes into a bulleted list.",
        ],
    ),
]
_ERRORS = [
    ("Python script", "IndexError: list index out of range"),
    ("Java build", "cannot find symbol"),
    ("Node app", "Cannot read properties of undefined"),
    ("C++ program", "undefined reference to main"),
    ("Django migration", "relation does not exist"),
]


def labelled_prompts() -> list[tuple[str, str]]:
    """The bench's own (text, category) prompts, in a fixed order."""
    out: list[tuple[str, str]] = []
    for category, templates, fillers in _TEMPLATES:
        if not fillers:  # the error template takes two fillers
            out += [(templates[0].format(*pair), category) for pair in _ERRORS]
            continue
        out += [(t.format(f), category) for t, f in itertools.product(templates, fillers)]
    return out


def readme_config() -> str:
    section = README.read_text().split("### Category classification", 1)[1]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    if match is None:
        sys.exit("the README's Category classification section has no TOML example")
    return match.group(1)


async def embed(texts: list[str]) -> np.ndarray:
    with ThreadPoolExecutor(2) as executor:
        embedder = create_embedder(EmbeddingSettings(backend="minilm", cache_entries=0), executor)
        await embedder.open()
        try:
            return np.asarray(await embedder.embed(texts))
        finally:
            await embedder.close()


def load_inputs(args: argparse.Namespace) -> tuple[Settings, list[tuple[str, str]]]:
    """The settings with the examples, and the labelled prompts."""
    if args.config is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "readme.toml"
            path.write_text(readme_config())
            settings = load_settings(config_file=path, environ={})
    else:
        settings = load_settings(config_file=args.config, environ={})
    if args.prompts is not None:
        rows = orjson.loads(args.prompts.read_bytes())
        prompts = [(str(r["text"]), str(r["category"])) for r in rows]
    else:
        prompts = labelled_prompts()
    return settings, prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="TOML file with the categories' examples")
    parser.add_argument("--prompts", type=Path, help='JSON array of {"text", "category"}')
    settings, prompts = load_inputs(parser.parse_args())

    examples = {p.name: p.examples for p in settings.categories if p.examples and p.enabled}
    if not examples:
        sys.exit("no category in the config lists examples")
    texts = [t for rows in examples.values() for t in rows]
    vectors = asyncio.run(embed(texts + [t for t, _ in prompts]))
    by_category, start = {}, 0
    for name, rows in examples.items():
        by_category[name] = vectors[start : start + len(rows)]
        start += len(rows)
    queries = vectors[start:]
    c = settings.classification

    def classifier(floor: float) -> ExampleClassifier:
        return ExampleClassifier(
            by_category,
            default=DEFAULT_CATEGORY,
            neighbours=c.neighbours,
            scale=c.scale,
            min_confidence=floor,
        )

    labelled = [(q, label) for q, (_, label) in zip(queries, prompts, strict=True)]
    categorised = [(q, label) for q, label in labelled if label != DEFAULT_CATEGORY]
    others = [q for q, label in labelled if label == DEFAULT_CATEGORY]
    print(
        f"{len(examples)} categories with {len(texts)} examples; {len(categorised)} "
        f"categorised prompts, {len(others)} of none of them (answer: default); "
        f"neighbours {c.neighbours}, scale {c.scale:g}\n"
    )
    print("| floor | coverage | accuracy | none-of-them prompts given a category |")
    print("|---|---|---|---|")
    for floor in FLOORS:
        clf = classifier(floor)
        decided = [(clf.classify(q), label) for q, label in categorised]
        # Inferred into default (when it lists examples) is served as default too.
        inferred = [(d, label) for d, label in decided if d.category != DEFAULT_CATEGORY]
        right = sum(d.category == label for d, label in inferred)
        stray = sum(clf.classify(q).category != DEFAULT_CATEGORY for q in others)
        accuracy = f"{right / len(inferred):.3f}" if inferred else "-"
        print(
            f"| {floor:.1f} | {len(inferred) / len(categorised):.3f} | {accuracy} "
            f"| {stray} of {len(others)} |"
        )

    clf = classifier(c.min_confidence)
    print_confusion(clf, labelled)
    rounds = 2000
    started = time.perf_counter()
    for i in range(rounds):
        clf.classify(queries[i % len(queries)])
    per_call = (time.perf_counter() - started) / rounds
    print(f"decision time: {per_call * 1e6:.1f} us per prompt ({len(texts)} examples)")
    return 0


def print_confusion(clf: ExampleClassifier, labelled: list[tuple[np.ndarray, str]]) -> None:
    """The confusion table at ``clf``'s floor, and the mean confidences."""
    names = sorted({label for _, label in labelled} | set(clf.categories) | {DEFAULT_CATEGORY})
    confusion: Counter[tuple[str, str]] = Counter()
    right_conf, wrong_conf = [], []
    for q, label in labelled:
        decision = clf.classify(q)
        confusion[(label, decision.category)] += 1
        (right_conf if decision.nearest == label else wrong_conf).append(decision.confidence)
    print(f"\nAt min_confidence {clf.min_confidence:g} (rows: the label, columns: the answer):\n")
    print("| label | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label in names:
        cells = " | ".join(str(confusion[(label, got)]) for got in names)
        print(f"| {label} | {cells} |")
    mean_right = float(np.mean(right_conf)) if right_conf else float("nan")
    mean_wrong = float(np.mean(wrong_conf)) if wrong_conf else float("nan")
    print(
        f"\nmean confidence when the nearest category is the label: {mean_right:.3f} "
        f"({len(right_conf)}); when it is not: {mean_wrong:.3f} ({len(wrong_conf)})"
    )


if __name__ == "__main__":
    sys.exit(main())
