"""The tenancy matrix: every /v1 route, every kind of token, whose resource it names.

Each cell creates the resource it needs afresh (with the owner's read/write token),
then makes the request with the token under test and records what it saw. The
expected table is written out by hand below, one row per route; ``own`` for a token
of acme is acme's resource, ``other`` bobco's. What the table says, in words:

- no token or an unknown one: 401 everywhere but the OpenAPI document;
- a namespace outside the token's: 403 (``namespace_forbidden``), whatever it holds;
- another tenant's entry id named in the caller's own namespace: 404, as if absent;
- feedback on another tenant's hit (its lookup id) or entry (its id): 404, never 403;
- a load report for a namespace outside the token's: 403, like any namespace it names;
- another tenant's chunk key or lease: 404, a plan misses it, a put makes the caller's
  own copy (201) instead of overwriting (200);
- a route whose scope the token lacks: 403 (``insufficient_scope``);
- the operator (``*``, admin) reaches every namespace, and still no tenant's chunks.

Run with ``-s`` to see the summary line for the closing note.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.service.http.tenancy_kit import (
    NAMESPACE,
    WRITER,
    Client,
    auth,
    put_header,
    start,
    tenancy_settings,
    vector,
)
from tests.service.kv.kit import TINY, key_of, variant

TOKEN_COLUMNS = ("acme_ro", "acme_rw", "bob", "ops", None, "bad")
OWNERS = ("acme", "bobco")
# The namespace a token calls its own (for "another tenant's id in my namespace").
HOME = {"acme_ro": "acme", "acme_rw": "acme", "bob": "bobco", "ops": "ops"}

_ = "401"  # no token or a bad one
# route -> token -> (observed for acme's resource, observed for bobco's)
EXPECTED: dict[str, dict[str | None, tuple[str, str]]] = {
    "semantic lookup": {
        "acme_ro": ("200", "403"), "acme_rw": ("200", "403"), "bob": ("403", "200"),
        "ops": ("200", "200"),
    },
    "semantic lookup:batch": {
        "acme_ro": ("200", "403"), "acme_rw": ("200", "403"), "bob": ("403", "200"),
        "ops": ("200", "200"),
    },
    "semantic insert": {
        "acme_ro": ("403", "403"), "acme_rw": ("201", "403"), "bob": ("403", "201"),
        "ops": ("201", "201"),
    },
    "entry get": {
        "acme_ro": ("200", "403"), "acme_rw": ("200", "403"), "bob": ("403", "200"),
        "ops": ("200", "200"),
    },
    "entry get, id in own namespace": {
        "acme_ro": ("200", "404"), "acme_rw": ("200", "404"), "bob": ("404", "200"),
        "ops": ("404", "404"),
    },
    "entry delete": {
        "acme_ro": ("403", "403"), "acme_rw": ("204", "403"), "bob": ("403", "204"),
        "ops": ("204", "204"),
    },
    "entry delete, id in own namespace": {
        "acme_ro": ("403", "403"), "acme_rw": ("204", "404"), "bob": ("404", "204"),
        "ops": ("404", "404"),
    },
    "semantic purge": {
        "acme_ro": ("403", "403"), "acme_rw": ("200", "403"), "bob": ("403", "200"),
        "ops": ("200", "200"),
    },
    "semantic feedback": {
        "acme_ro": ("403", "403"), "acme_rw": ("200", "404"), "bob": ("404", "200"),
        "ops": ("200", "200"),
    },
    "semantic feedback, by entry id": {
        "acme_ro": ("403", "403"), "acme_rw": ("200", "404"), "bob": ("404", "200"),
        "ops": ("200", "200"),
    },
    "semantic load": {
        "acme_ro": ("403", "403"), "acme_rw": ("200", "403"), "bob": ("403", "200"),
        "ops": ("200", "200"),
    },
    "semantic stats": {
        "acme_ro": ("403", "403"), "acme_rw": ("403", "403"), "bob": ("403", "403"),
        "ops": ("200", "200"),
    },
    "chunk put": {
        "acme_ro": ("403", "403"), "acme_rw": ("200", "201"), "bob": ("201", "200"),
        "ops": ("201", "201"),
    },
    "chunk get": {
        "acme_ro": ("200", "404"), "acme_rw": ("200", "404"), "bob": ("404", "200"),
        "ops": ("404", "404"),
    },
    "chunk head": {
        "acme_ro": ("200", "404"), "acme_rw": ("200", "404"), "bob": ("404", "200"),
        "ops": ("404", "404"),
    },
    "chunk delete": {
        "acme_ro": ("403", "403"), "acme_rw": ("200", "404"), "bob": ("404", "200"),
        "ops": ("404", "404"),
    },
    "kv plan": {
        "acme_ro": ("200 hit", "200 miss"), "acme_rw": ("200 hit", "200 miss"),
        "bob": ("200 miss", "200 hit"), "ops": ("200 miss", "200 miss"),
    },
    "lease release": {
        "acme_ro": ("204", "404"), "acme_rw": ("204", "404"), "bob": ("404", "204"),
        "ops": ("404", "404"),
    },
    "kv stats": {
        "acme_ro": ("403", "403"), "acme_rw": ("403", "403"), "bob": ("403", "403"),
        "ops": ("200", "200"),
    },
    "kv models": {
        "acme_ro": ("200", "200"), "acme_rw": ("200", "200"), "bob": ("200", "200"),
        "ops": ("200", "200"),
    },
    "admin config": {
        "acme_ro": ("403", "403"), "acme_rw": ("403", "403"), "bob": ("403", "403"),
        "ops": ("200", "200"),
    },
    "admin log-level": {
        "acme_ro": ("403", "403"), "acme_rw": ("403", "403"), "bob": ("403", "403"),
        "ops": ("200", "200"),
    },
    "openapi document": {
        "acme_ro": ("200", "200"), "acme_rw": ("200", "200"), "bob": ("200", "200"),
        "ops": ("200", "200"), None: ("200", "200"), "bad": ("200", "200"),
    },
}  # fmt: skip
for row in EXPECTED.values():  # without a valid token, every protected route is a 401
    row.setdefault(None, (_, _))
    row.setdefault("bad", (_, _))


class World:
    """Makes each cell's resource afresh, with the owner's own read/write token."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.serial = itertools.count(1)

    async def entry(self, owner: str) -> int:
        n = next(self.serial)
        response = await self.client.post(
            "/v1/semantic/entries",
            json={"namespace": NAMESPACE[owner], "prompt": f"p{n}", "response": n,
                  "vector": vector(n)},
            headers=auth(WRITER[owner]),
        )  # fmt: skip
        assert response.status == 201, await response.text()
        return int((await response.json())["entry_id"])

    async def lookup_id(self, owner: str) -> str:
        """A hit served to the owner: its lookup id."""
        n = next(self.serial)
        response = await self.client.post(
            "/v1/semantic/entries",
            json={"namespace": NAMESPACE[owner], "prompt": f"p{n}", "response": n,
                  "vector": vector(n)},
            headers=auth(WRITER[owner]),
        )  # fmt: skip
        assert response.status == 201, await response.text()
        response = await self.client.post(
            "/v1/semantic/lookup",
            json={"namespace": NAMESPACE[owner], "vector": vector(n)},
            headers=auth(WRITER[owner]),
        )
        found = await response.json()
        assert found["hit"], found
        return str(found["lookup_id"])

    async def chunk(self, owner: str) -> tuple[str, bytes]:
        key = key_of(next(self.serial), OWNERS.index(owner))
        _, blob = variant(key)
        response = await self.client.put(
            f"/v1/kv/chunks/{key.hex()}",
            data=blob,
            headers={**auth(WRITER[owner]), "X-Semcached-KV-Meta": put_header()},
        )
        assert response.status == 201, await response.text()
        return key.hex(), blob

    async def lease(self, owner: str) -> str:
        key, _ = await self.chunk(owner)
        response = await self.client.get(
            f"/v1/kv/chunks/{key}", params={"transfer": "shm"}, headers=auth(WRITER[owner])
        )
        assert response.status == 200, await response.text()
        return str((await response.json())["lease"]["id"])


Probe = Callable[[Client, dict[str, str], str, str, World], Awaitable[str]]


def _status(response: Any) -> str:
    return str(response.status)


async def lookup(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    body = {"namespace": NAMESPACE[owner], "vector": vector(0)}
    return _status(await c.post("/v1/semantic/lookup", json=body, headers=h))


async def lookup_batch(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    body = {"lookups": [{"namespace": NAMESPACE[owner], "vector": vector(0)}]}
    return _status(await c.post("/v1/semantic/lookup:batch", json=body, headers=h))


async def insert(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    body = {"namespace": NAMESPACE[owner], "prompt": "x", "response": 1, "vector": vector(1)}
    return _status(await c.post("/v1/semantic/entries", json=body, headers=h))


def entry_route(method: str, *, own_namespace: bool) -> Probe:
    async def probe(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
        entry_id = await w.entry(owner)
        namespace = home if own_namespace else NAMESPACE[owner]
        response = await c.request(
            method, f"/v1/semantic/entries/{entry_id}", params={"namespace": namespace}, headers=h
        )
        return _status(response)

    return probe


async def purge(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    await w.entry(owner)
    return _status(
        await c.post("/v1/semantic/purge", json={"namespace": NAMESPACE[owner]}, headers=h)
    )


async def feedback(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    body = {"lookup_id": await w.lookup_id(owner), "correct": False}
    return _status(await c.post("/v1/semantic/feedback", json=body, headers=h))


async def feedback_by_entry(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    body = {"entry_id": await w.entry(owner), "correct": False}
    return _status(await c.post("/v1/semantic/feedback", json=body, headers=h))


async def load(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    body = {"namespace": NAMESPACE[owner], "model": "m", "queue_depth": 3}
    return _status(await c.post("/v1/semantic/load", json=body, headers=h))


def plain(method: str, path: str, json: Any = None) -> Probe:
    async def probe(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
        return _status(await c.request(method, path, json=json, headers=h))

    return probe


async def chunk_put(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    key, blob = await w.chunk(owner)
    headers = {**h, "X-Semcached-KV-Meta": put_header()}
    return _status(await c.put(f"/v1/kv/chunks/{key}", data=blob, headers=headers))


def chunk_route(method: str) -> Probe:
    async def probe(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
        key, _ = await w.chunk(owner)
        return _status(await c.request(method, f"/v1/kv/chunks/{key}", headers=h))

    return probe


async def plan(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    key, _ = await w.chunk(owner)
    response = await c.post("/v1/kv/plan", json={"model": TINY.name, "chunks": [key]}, headers=h)
    if response.status != 200:
        return _status(response)
    return "200 " + ("hit" if (await response.json())["hits"] == 1 else "miss")


async def release(c: Client, h: dict[str, str], owner: str, home: str, w: World) -> str:
    lease_id = await w.lease(owner)
    return _status(await c.delete(f"/v1/kv/leases/{lease_id}", headers=h))


PROBES: dict[str, Probe] = {
    "semantic lookup": lookup,
    "semantic lookup:batch": lookup_batch,
    "semantic insert": insert,
    "entry get": entry_route("GET", own_namespace=False),
    "entry get, id in own namespace": entry_route("GET", own_namespace=True),
    "entry delete": entry_route("DELETE", own_namespace=False),
    "entry delete, id in own namespace": entry_route("DELETE", own_namespace=True),
    "semantic purge": purge,
    "semantic feedback": feedback,
    "semantic feedback, by entry id": feedback_by_entry,
    "semantic load": load,
    "semantic stats": plain("GET", "/v1/semantic/stats"),
    "chunk put": chunk_put,
    "chunk get": chunk_route("GET"),
    "chunk head": chunk_route("HEAD"),
    "chunk delete": chunk_route("DELETE"),
    "kv plan": plan,
    "lease release": release,
    "kv stats": plain("GET", "/v1/kv/stats"),
    "kv models": plain("GET", "/v1/kv/models"),
    "admin config": plain("GET", "/v1/admin/config"),
    "admin log-level": plain("PUT", "/v1/admin/log-level", {"level": "info"}),
    "openapi document": plain("GET", "/v1/openapi.json"),
}


async def test_tenancy_matrix(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await start(aiohttp_client, tenancy_settings(tmp_path))
    world = World(client)
    failures = []
    cells = 0
    for route, probe in PROBES.items():
        for token, owner in itertools.product(TOKEN_COLUMNS, OWNERS):
            expected = EXPECTED[route][token][OWNERS.index(owner)]
            seen = await probe(client, auth(token), owner, HOME.get(token or "", "acme"), world)
            cells += 1
            if seen != expected:
                failures.append(f"{route} / token {token} / {owner}'s: {seen}, expected {expected}")
    print(f"\ntenancy matrix: {cells} cells checked, {cells - len(failures)} passed")
    assert not failures, "\n".join(failures)


def test_the_matrix_covers_every_v1_route(tmp_path: Path) -> None:
    """A route added without a row here would escape the matrix."""
    from semcached.service.http.routes import DEFAULT_GROUPS

    probed = {
        ("POST", "/v1/semantic/lookup"), ("POST", "/v1/semantic/lookup:batch"),
        ("POST", "/v1/semantic/entries"), ("GET", "/v1/semantic/entries/{id}"),
        ("DELETE", "/v1/semantic/entries/{id}"), ("POST", "/v1/semantic/purge"),
        ("GET", "/v1/semantic/stats"), ("POST", "/v1/semantic/feedback"),
        ("POST", "/v1/semantic/load"),
        ("PUT", "/v1/kv/chunks/{key}"),
        ("GET", "/v1/kv/chunks/{key}"), ("HEAD", "/v1/kv/chunks/{key}"),
        ("DELETE", "/v1/kv/chunks/{key}"), ("POST", "/v1/kv/plan"),
        ("DELETE", "/v1/kv/leases/{id}"), ("GET", "/v1/kv/stats"), ("GET", "/v1/kv/models"),
        ("GET", "/v1/admin/config"), ("PUT", "/v1/admin/log-level"),
        ("GET", "/v1/openapi.json"),
        # The caching proxy's routes need an upstream: test_proxy_auth.py checks them.
        ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    }  # fmt: skip
    routes = {
        (op.method, op.path)
        for group in DEFAULT_GROUPS
        for op in group.operations
        if op.path.startswith("/v1/")
    }
    assert routes == probed
