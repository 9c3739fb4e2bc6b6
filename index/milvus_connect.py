"""Connecting to Milvus: pymilvus's client, milvus-lite's in-process server, and their errors.

A uri ending in ``.db`` is a milvus-lite database (pymilvus's rule): pymilvus starts
milvus-lite's gRPC server in this process, once per file, on a loopback port chosen
by the OS, and connects to it. Anything else (``http://host:19530``) is a Milvus server
or cluster. Both are checked with one call when connecting, so that a missing package
or an unreachable server is a :class:`~semcached.errors.ConfigError` at start.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from semcached.errors import ConfigError

__all__ = [
    "MilvusUnavailableError",
    "connect",
    "import_pymilvus",
    "is_local_uri",
    "stop_local_server",
]


class MilvusUnavailableError(ConfigError):
    """pymilvus / milvus-lite is not installed, or the Milvus server cannot be reached."""


def import_pymilvus() -> Any:
    """The pymilvus module, or :class:`MilvusUnavailableError` naming the extra."""
    try:
        import pymilvus
    except ImportError as exc:
        raise MilvusUnavailableError(
            "the milvus index backend needs pymilvus (and milvus-lite for a local .db "
            f"uri): install the `milvus` extra (pip install 'semcached[milvus]') ({exc})"
        ) from exc
    return pymilvus


def is_local_uri(uri: str) -> bool:
    """A milvus-lite database file (pymilvus's rule: the uri ends with ``.db``)."""
    return uri.endswith(".db")


def _local_path(uri: str) -> str:
    return str(Path(uri).resolve())


def connect(uri: str, *, token: str = "", timeout_s: float = 10.0) -> Any:
    """A ``MilvusClient`` for ``uri``, checked with one call; unreachable: ConfigError.

    For a local ``.db`` uri the directory around it must exist; pymilvus starts
    milvus-lite's server in this process (once per file) and connects over loopback.
    """
    pymilvus = import_pymilvus()
    options: dict[str, Any] = {}
    if is_local_uri(uri):
        try:
            import milvus_lite  # noqa: F401
        except ImportError as exc:
            raise MilvusUnavailableError(
                f"a local Milvus uri ({uri}) needs milvus-lite: install the `milvus` extra ({exc})"
            ) from exc
        uri = _local_path(uri)
        # milvus-lite's gRPC server keeps grpc's default ping policy and answers the
        # client's idle keepalive pings with GOAWAY "too_many_pings" (seen here).
        options["grpc_options"] = {"grpc.keepalive_permit_without_calls": 0}
    try:
        client = pymilvus.MilvusClient(uri=uri, token=token, timeout=timeout_s, **options)
        client.list_collections()
    except Exception as exc:
        raise MilvusUnavailableError(f"cannot reach Milvus at {uri}: {exc}") from exc
    return client


def stop_local_server(uri: str) -> None:
    """Stop milvus-lite's in-process server for a ``.db`` uri (no-op otherwise).

    Clients of it stop working. Called at daemon shutdown and by tests.
    """
    if not is_local_uri(uri):
        return
    with contextlib.suppress(ImportError):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(_local_path(uri))
