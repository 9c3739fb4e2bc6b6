"""The RAG workload of bench/rag_reuse.py: chunks cut from Python's own docstrings,
prompts of a fixed system part, Zipf-drawn chunks in random order and a question.

Everything is deterministic for a given Python version, tokenizer and seed: the
modules are read in a fixed order, their text is cut at paragraph boundaries, the
prompts come from ``numpy.random.default_rng(seed)``.

Token ids are the truth: each part (system, chunk, question) is tokenised on its own
and the prompt is their concatenation, so a chunk has the same ids (and the same chunk
key) in every prompt it appears in. The chat template supplies the frame: the system
part ends with the opening of the user turn, the question part closes it and opens the
assistant turn.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MODULES", "Chunk", "Prompt", "Workload", "build_workload", "describe"]

#: Standard-library modules whose documentation makes the chunks, in the order read.
MODULES: tuple[str, ...] = (
    "json", "csv", "argparse", "collections", "itertools", "heapq", "statistics", "re",
    "copy", "socket", "struct", "uuid", "timeit", "sched", "unittest", "io", "difflib",
    "tempfile", "configparser", "cmd", "typing", "doctest", "ast", "tokenize",
    "urllib.parse", "http.client", "xml.etree.ElementTree", "sqlite3", "os", "subprocess",
    "random", "string", "mimetypes", "inspect", "wave", "colorsys", "zlib", "getopt",
    "trace", "pprint", "functools", "pathlib", "fnmatch", "operator", "shutil", "hashlib",
)  # fmt: skip

SYSTEM = (
    "You are a helpful assistant for Python programmers. Answer the question using only "
    "the documentation excerpts given by the user. Be brief and precise."
)

QUESTIONS: tuple[str, ...] = (
    "Which Python module does the first excerpt above describe? Answer with its name.",
    "Which Python module does the last excerpt above describe? Answer with its name.",
    "Summarise what the second excerpt above explains, in one sentence.",
    "Which of the excerpts above mentions {word!r}, and what does it say about it?",
    "List the Python modules that the excerpts above come from.",
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrieved document: ``ids`` its token ids (tokenised alone)."""

    index: int
    module: str
    text: str
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request: chunk indices in prompt order and the question's token ids."""

    chunks: tuple[int, ...]
    question: str
    question_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Workload:
    system_ids: tuple[int, ...]
    chunks: tuple[Chunk, ...]
    prompts: tuple[Prompt, ...]

    def chunk_tokens(self) -> list[int]:
        return [len(c.ids) for c in self.chunks]


def _module_text(name: str) -> str:
    """The module's docstring followed by its public members' docstrings (sorted by
    name), as paragraphs."""
    module = importlib.import_module(name)
    parts = [inspect.getdoc(module) or ""]
    for attr in sorted(getattr(module, "__all__", None) or dir(module)):
        if attr.startswith("_"):
            continue
        member = getattr(module, attr, None)
        if not (inspect.isclass(member) or inspect.isfunction(member)):
            continue
        if getattr(member, "__module__", name) != name:
            continue  # re-exported from elsewhere
        doc = inspect.getdoc(member)
        if doc:
            parts.append(f"{name}.{attr}: {doc}")
    return "\n\n".join(p.strip() for p in parts if p.strip())


def _cut(
    tokenizer: Any, text: str, min_tokens: int, max_tokens: int, limit: int
) -> list[tuple[str, list[int]]]:
    """Up to ``limit`` pieces of ``text``: whole paragraphs gathered until a piece has at
    least ``min_tokens`` tokens; a piece over ``max_tokens`` is cut to that many tokens
    (and its text decoded from them)."""
    out: list[tuple[str, list[int]]] = []
    current: list[str] = []
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        piece = "\n\n".join(current) + "\n\n"
        ids = tokenizer(piece, add_special_tokens=False).input_ids
        if len(ids) < min_tokens:
            continue
        if len(ids) > max_tokens:
            ids = ids[:max_tokens]
            piece = tokenizer.decode(ids)  # for display: the chunk is its ids
        out.append((piece, list(ids)))
        current = []
        if len(out) == limit:
            break
    return out


def build_workload(
    tokenizer: Any,
    *,
    chunks: int,
    prompts: int,
    seed: int,
    min_tokens: int = 128,
    max_tokens: int = 256,
    per_module: int = 2,
    chunks_per_prompt: tuple[int, int] = (3, 5),
    zipf_s: float = 1.0,
) -> Workload:
    """``chunks`` chunks of ``min_tokens``..``max_tokens`` tokens (at most ``per_module``
    from each module, read in :data:`MODULES` order) and ``prompts`` prompts, each of
    k ∈ ``chunks_per_prompt`` distinct chunks drawn Zipf(``zipf_s``) over a seeded
    popularity ranking, in random order, plus a question from :data:`QUESTIONS`."""
    found: list[Chunk] = []
    for name in MODULES:
        for text, ids in _cut(tokenizer, _module_text(name), min_tokens, max_tokens, per_module):
            found.append(Chunk(len(found), name, text, tuple(ids)))
            if len(found) == chunks:
                break
        if len(found) == chunks:
            break
    if len(found) < chunks:
        raise ValueError(f"only {len(found)} chunks of >= {min_tokens} tokens in MODULES")

    frame = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\x00"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    head, tail = frame.split("\x00")
    system_ids = tuple(tokenizer(head, add_special_tokens=False).input_ids)

    rng = np.random.default_rng(seed)
    popularity = rng.permutation(chunks)  # popularity[r] = the chunk of rank r
    weights = 1.0 / np.arange(1, chunks + 1, dtype=np.float64) ** zipf_s
    weights /= weights.sum()
    made: list[Prompt] = []
    for _ in range(prompts):
        k = int(rng.integers(chunks_per_prompt[0], chunks_per_prompt[1] + 1))
        ranks = rng.choice(chunks, size=k, replace=False, p=weights)
        order = tuple(int(popularity[r]) for r in ranks)  # drawn order is random order
        template = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        word = _pick_word(found[order[int(rng.integers(k))]].text, rng)
        question = template.format(word=word)
        question_ids = tuple(tokenizer(question + tail, add_special_tokens=False).input_ids)
        made.append(Prompt(order, question, question_ids))
    return Workload(system_ids, tuple(found), tuple(made))


def _pick_word(text: str, rng: np.random.Generator) -> str:
    words = sorted({w.strip(".,:;()[]'\"`") for w in text.split()})
    words = [w for w in words if len(w) >= 6 and w.isidentifier()]
    return words[int(rng.integers(len(words)))] if words else "function"


def describe(workload: Workload, sample: Sequence[int] = (0,)) -> str:
    """A few lines about ``workload`` for the benchmark's header."""
    lengths = workload.chunk_tokens()
    per_prompt = [len(p.chunks) for p in workload.prompts]
    modules = len({c.module for c in workload.chunks})
    lines = [
        f"{len(workload.chunks)} chunks from {modules} stdlib modules, "
        f"{min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.0f}); "
        f"system part {len(workload.system_ids)} tokens; {len(workload.prompts)} prompts of "
        f"{min(per_prompt)}-{max(per_prompt)} chunks",
    ]
    for i in sample:
        p = workload.prompts[i]
        lines.append(f"  prompt {i}: chunks {list(p.chunks)}, question {p.question!r}")
    return "\n".join(lines)
