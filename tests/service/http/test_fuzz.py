"""Schemathesis against a real daemon over HTTP: no 5xx, and every answer as documented.

Each operation of the served OpenAPI document gets generated requests (valid and
invalid, with the bearer token the daemon requires), then the stateful run follows the
document's links (an inserted entry is read and deleted by its id, a stored chunk
variant read, probed and deleted by its key and variant). Checks: no server error, and
the status code, content type, headers and body conform to the document. Marked slow
(`.ci/run` runs it); about two minutes on two cores.

The module-level document is built from the same settings the daemon is started with:
schemathesis generates the cases at collection, before the daemon runs (its lazy
``from_fixture`` loader does not work with pytest 9); a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import orjson
import pytest
import schemathesis
import urllib3
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from semcached.service.config import load_settings
from semcached.service.http.openapi import build_openapi
from semcached.service.http.routes import DEFAULT_GROUPS
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 100
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
CASES: dict[str, int] = {}


DAEMON_ARGS = {
    "embedding.dim": "4",
    "server.access_log": "false",
    "server.max_body_bytes": "65536",
    "kv.host_bytes": str(8 << 20),
    "kv.disk_bytes": str(32 << 20),
}
DAEMON_ENV = {"SEMCACHED_SERVER_AUTH_TOKEN": TOKEN}  # a token flag would show in `ps`


def _document() -> dict[str, Any]:
    """The document the daemon serves with DAEMON_ARGS (built here: cases are generated
    at collection, before any daemon runs; a test checks the served one is the same)."""
    settings = load_settings(environ={"SEMCACHED_EMBEDDING_BACKEND": "none"}, overrides=DAEMON_ARGS)
    return build_openapi(DEFAULT_GROUPS, bearer_auth=True, settings=settings)


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture(scope="module")
def fuzzed_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    args = [part for key, value in DAEMON_ARGS.items() for part in (f"--{key}", value)]
    process = DaemonProcess(data, [*args, "--kv.shm_dir", str(data.parent)], env=DAEMON_ENV)
    try:
        yield process.wait_ready()
    finally:
        code = process.terminate()
        print(f"schemathesis: {sum(CASES.values())} cases; by operation: {CASES}")
        assert code == 0
        assert "Traceback" not in process.log, process.log


def test_the_served_document_is_the_fuzzed_one(fuzzed_daemon: str) -> None:
    served = urllib3.request("GET", fuzzed_daemon + "/v1/openapi.json").json()
    assert served == orjson.loads(orjson.dumps(schema.raw_schema))


@schema.parametrize()
@hypothesis.settings(SETTINGS)
def test_every_operation_answers_as_documented(case: Any, fuzzed_daemon: str) -> None:
    label = f"{case.method} {case.path}"
    CASES[label] = CASES.get(label, 0) + 1
    case.call_and_validate(base_url=fuzzed_daemon, headers=AUTH, checks=CHECKS)


def test_stateful_sequences_follow_the_links(fuzzed_daemon: str) -> None:
    machine = schema.as_state_machine()

    class Authenticated(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": AUTH, "base_url": fuzzed_daemon}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            CASES["stateful"] = CASES.get("stateful", 0) + 1
            case.validate_response(response, checks=CHECKS, headers=AUTH)

    Authenticated.run(
        settings=hypothesis.settings(
            max_examples=80,
            stateful_step_count=8,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )


def test_the_document_has_links_for_stateful_runs() -> None:
    raw = schema.raw_schema
    created = raw["paths"]["/v1/semantic/entries"]["post"]["responses"]["201"]
    assert {"GetEntry", "DeleteEntry"} <= set(created["links"])
    put = raw["paths"]["/v1/kv/chunks/{key}"]["put"]["responses"]["201"]
    assert {"GetChunk", "HeadChunk", "DeleteChunk"} <= set(put["links"])
