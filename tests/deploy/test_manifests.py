"""deploy/: every Kubernetes manifest against the Kubernetes 1.37 schemas (offline,
those kubernetes-validate ships; the ServiceMonitor CRD against the subset schema in
schemas/), the patterns' invariants, the daemon configs and tokens file they carry,
the compose file against the compose specification, and the Dockerfile through
hadolint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from semcached.service.auth.tenants import TenantLimits
from semcached.service.auth.tokens import load_tokens_file
from semcached.service.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
PATTERNS = ("sidecar", "kv-engine", "shared-service")
KUBERNETES_VERSION = "1.37.0"
SCHEMAS = Path(__file__).parent / "schemas"
LOCAL_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}
VOLUME = "/var/lib/semcached"
MiB = 1 << 20
GiB = 1 << 30


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resources(pattern: str) -> list[dict[str, Any]]:
    """The pattern's resources as its kustomization lists them."""
    kustomization = yaml.safe_load((K8S / pattern / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in documents(K8S / pattern / name)]


def of_kind(pattern: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in resources(pattern) if r["kind"] == kind]


def validate(resource: dict[str, Any]) -> str:
    """Raise on a schema violation; return what it was checked against."""
    local = LOCAL_SCHEMAS.get((resource["apiVersion"], resource["kind"]))
    if local is not None:
        jsonschema.Draft202012Validator(json.loads((SCHEMAS / local).read_text())).validate(
            resource
        )
        return f"tests/deploy/schemas/{local}"
    return "kubernetes " + kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def pod_spec(pattern: str) -> dict[str, Any]:
    (workload,) = [r for r in resources(pattern) if r["kind"] in ("Deployment", "StatefulSet")]
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def semcached_container(spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [
        c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "semcached"
    ]
    return container


def daemon_settings(pattern: str, tmp_path: Path) -> Settings:
    """The pattern's semcached.toml as the daemon in the pod reads it: with the image's
    environment and the container's own variables over it."""
    (configmap,) = [c for c in of_kind(pattern, "ConfigMap") if "semcached.toml" in c["data"]]
    path = tmp_path / f"{pattern}.toml"
    path.write_text(configmap["data"]["semcached.toml"])
    environ = image_environment()
    for item in semcached_container(pod_spec(pattern)).get("env", []):
        if "value" in item:
            environ[item["name"]] = item["value"]
    environ.pop("SEMCACHED_CONFIG")
    return load_settings(config_file=path, environ=environ)


def image_environment() -> dict[str, str]:
    """The SEMCACHED_* variables the Dockerfile's runtime stage sets."""
    text = (ROOT / "Dockerfile").read_text().split(" AS runtime")[1]
    return dict(re.findall(r"\b(SEMCACHED_[A-Z_]+)=(\S+)", text))


def quantity(value: str) -> int:
    units = {"Ki": 1 << 10, "Mi": MiB, "Gi": GiB, "Ti": 1 << 40}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(value[: -len(suffix)]) * factor
    return int(value)


def mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_matches_the_kubernetes_schemas(path: Path) -> None:
    docs = documents(path)
    assert docs
    for resource in docs:
        checked = validate(resource)
        print(
            f"OK {path.relative_to(ROOT)} {resource['kind']}/{resource['metadata']['name']}"
            f" against {checked}"
        )


def test_a_schema_violation_is_caught() -> None:
    """The validation is strict: a misspelt field and a wrong type both fail."""
    (deployment,) = of_kind("sidecar", "Deployment")
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(jsonschema.ValidationError):
        validate(typo)
    (monitor,) = of_kind("shared-service", "ServiceMonitor")
    wrong = json.loads(json.dumps(monitor))
    wrong["spec"]["endpoints"][0]["interval"] = 30
    with pytest.raises(jsonschema.ValidationError):
        validate(wrong)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_kustomization_lists_exactly_its_manifests(pattern: str) -> None:
    kustomization = yaml.safe_load((K8S / pattern / "kustomization.yaml").read_text())
    present = {p.name for p in (K8S / pattern).glob("*.yaml")} - {"kustomization.yaml"}
    examples = {name for name in present if name.endswith(".example.yaml")}
    assert set(kustomization["resources"]) == present - examples


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_kustomization_renders_to_valid_manifests(pattern: str) -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl (which embeds it) is installed")
    rendered = subprocess.run(
        [*command, str(K8S / pattern)], check=True, capture_output=True, text=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == len(resources(pattern))
    for resource in docs:
        validate(resource)
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_semcached_runs_locked_down(pattern: str) -> None:
    spec = pod_spec(pattern)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001  # the image's user, so the volumes are its own
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    container = semcached_container(spec)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # A read-only root: everything the daemon writes is a mounted volume.
    assert {VOLUME, "/tmp"} <= set(mounts(container))
    assert spec["terminationGracePeriodSeconds"] >= 30


@pytest.mark.parametrize("pattern", PATTERNS)
def test_probes_ask_readyz_and_livez_on_the_probe_listener(pattern: str, tmp_path: Path) -> None:
    settings = daemon_settings(pattern, tmp_path)
    container = semcached_container(pod_spec(pattern))
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        if "httpGet" in spec:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports[spec["httpGet"]["port"]] == settings.server.probe_port
            paths[probe] = spec["httpGet"]["path"]
        else:  # loopback only: the kubelet cannot dial it, the pod's python can
            assert settings.server.host == "127.0.0.1"
            (url,) = re.findall(r"http://[^']+", " ".join(spec["exec"]["command"]))
            assert url.startswith(f"http://127.0.0.1:{settings.server.probe_port}/")
            paths[probe] = "/" + url.rsplit("/", 1)[1]
    assert paths == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/livez",
    }
    # The pod's grace period covers the drain.
    grace = pod_spec(pattern)["terminationGracePeriodSeconds"]
    assert grace > settings.server.drain_delay_s + settings.server.shutdown_timeout_s


def hnsw_resident_bytes(entries: int, dim: int, m: int) -> int:
    """What docs/deploy.md's sizing counts per entry: the vector, the level-0 links
    (2M+1 ints), the label, and about 100 bytes of hnswlib's and the engine's own."""
    return entries * (dim * 4 + (2 * m + 1) * 4 + 8 + 100)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_memory_limits_cover_the_configured_budgets(pattern: str, tmp_path: Path) -> None:
    settings = daemon_settings(pattern, tmp_path)
    container = semcached_container(pod_spec(pattern))
    limit = quantity(container["resources"]["limits"]["memory"])
    assert quantity(container["resources"]["requests"]["memory"]) <= limit
    entries = sum(p.max_entries for p in settings.categories.policies.values() if p.enabled)
    dim = 384 if settings.embedding.backend == "minilm" else settings.embedding.dim
    need = hnsw_resident_bytes(entries, dim, settings.index.hnsw_m) if entries else 0
    need += 256 * MiB  # the daemon itself
    if settings.embedding.backend == "minilm":
        need += 512 * MiB  # torch and the model
    if settings.kv.enabled:
        need += settings.kv.host_bytes  # tmpfs pages are charged to their writer
    assert need <= limit, f"{pattern}: budgets need {need / GiB:.2f} GiB, limit {limit / GiB}"


def test_sidecar_is_a_native_sidecar_on_loopback_with_a_file_token(tmp_path: Path) -> None:
    settings = daemon_settings("sidecar", tmp_path)
    spec = pod_spec("sidecar")
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: starts first, stops last
    assert settings.server.host == "127.0.0.1"
    assert not any("hostNetwork" in k for k in spec)
    # The tokens file comes from a Secret mounted where auth.tokens_file points.
    tokens = Path(settings.auth.tokens_file)
    volume = {v["name"]: v for v in spec["volumes"]}[mounts(sidecar)[str(tokens.parent)]]
    assert volume["secret"]["secretName"] == "semcached-tokens"
    assert [i["path"] for i in volume["secret"]["items"]] == [tokens.name]
    # The gateway reaches the daemon on loopback with the plaintext token of that Secret.
    (gateway,) = spec["containers"]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["SEMCACHED_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "semcached-tokens"
    (configmap,) = of_kind("sidecar", "ConfigMap")
    litellm = yaml.safe_load(configmap["data"]["litellm.yaml"])
    cache = litellm["litellm_settings"]["cache_params"]
    assert cache["qdrant_api_base"] == f"http://127.0.0.1:{settings.server.port}"
    assert cache["qdrant_semantic_cache_vector_size"] == settings.embedding.dim
    assert settings.qdrant.enabled


def test_the_example_tokens_secret_is_a_tokens_file_the_daemon_reads(tmp_path: Path) -> None:
    (secret,) = documents(K8S / "sidecar" / "secret.example.yaml")
    path = tmp_path / "tokens.toml"
    path.write_text(secret["stringData"]["tokens.toml"])
    table = load_tokens_file(path, TenantLimits())
    assert {p.tenant.name for p in table.principals.values()} == {"gateway"}


def test_kv_engine_shares_memory_and_the_gpu_on_loopback(tmp_path: Path) -> None:
    settings = daemon_settings("kv-engine", tmp_path)
    spec = pod_spec("kv-engine")
    volumes = {v["name"]: v for v in spec["volumes"]}
    (engine,) = spec["containers"]
    sidecar = semcached_container(spec)
    shm = mounts(sidecar)[str(settings.kv.shm_dir)]
    assert mounts(engine)[str(settings.kv.shm_dir)] == shm  # handles name files there
    assert volumes[shm]["emptyDir"]["medium"] == "Memory"
    assert quantity(volumes[shm]["emptyDir"]["sizeLimit"]) >= settings.kv.host_bytes
    assert settings.kv.enabled
    assert settings.kv.shm
    assert settings.kv_gpu.max_bytes == 4 * GiB  # [kv.gpu] in the TOML
    # One GPU claim, both containers on it (CUDA IPC needs the same device).
    (claim,) = spec["resourceClaims"]
    for container in (engine, sidecar):
        assert container["resources"]["claims"] == [{"name": claim["name"]}]
    (template,) = of_kind("kv-engine", "ResourceClaimTemplate")
    assert template["metadata"]["name"] == claim["resourceClaimTemplateName"]
    assert settings.server.host == "127.0.0.1"
    url = {e["name"]: e["value"] for e in engine["env"]}["SEMCACHED_URL"]
    assert url == f"http://127.0.0.1:{settings.server.port}"


def test_shared_service_is_scraped_and_disrupted_one_at_a_time(tmp_path: Path) -> None:
    settings = daemon_settings("shared-service", tmp_path)
    (statefulset,) = of_kind("shared-service", "StatefulSet")
    (service,) = of_kind("shared-service", "Service")
    (pdb,) = of_kind("shared-service", "PodDisruptionBudget")
    (monitor,) = of_kind("shared-service", "ServiceMonitor")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert settings.server.host == "0.0.0.0"  # the image's: other pods connect
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert statefulset["spec"]["replicas"] > pdb["spec"]["maxUnavailable"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert ports[endpoint["port"]]["port"] == settings.server.probe_port
    assert endpoint["path"] == "/metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.server.probe_port)
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert (
        mounts(semcached_container(pod_spec("shared-service")))[VOLUME] == claim["metadata"]["name"]
    )


def check_jsonschema() -> Path:
    return Path(sys.executable).parent / "check-jsonschema"


def test_compose_file_matches_the_compose_specification() -> None:
    """check-jsonschema's vendored copy of the compose-spec schema: no network."""
    result = subprocess.run(
        [
            str(check_jsonschema()),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "deploy" / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0


def test_compose_runs_the_proxy_in_front_of_the_upstream(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    semcached = compose["services"]["semcached"]
    assert semcached["build"]["context"] == ".."
    assert f"semcached-data:{VOLUME}" in semcached["volumes"]
    config = compose["configs"]["semcached.toml"]["content"]
    path = tmp_path / "semcached.toml"
    path.write_text(config)
    settings = load_settings(config_file=path, environ=image_environment())
    upstream = settings.proxy.upstream_url
    assert upstream.startswith("http://upstream:")
    assert "upstream" in compose["services"]
    (published,) = semcached["ports"]
    assert published.startswith("127.0.0.1:")  # a laptop: not on every interface


def hadolint() -> Path:
    return Path(sys.executable).parent / "hadolint"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(hadolint()), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python\n")
    result = subprocess.run(
        [str(hadolint()), str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest


def iter_image_contract() -> Iterator[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().split(" AS runtime")[1]
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word.isupper():
            yield word, rest


def test_runtime_stage_is_non_root_with_the_volume_and_entrypoint() -> None:
    contract = dict(iter_image_contract())
    assert contract["USER"] == "${APP_UID}:${APP_GID}"
    assert contract["ENTRYPOINT"] == '["semcached", "serve"]'
    assert contract["VOLUME"] == f'["{VOLUME}"]'
    assert contract["STOPSIGNAL"] == "SIGTERM"
    assert "/livez" in (ROOT / "Dockerfile").read_text().split("HEALTHCHECK")[1]
    env = image_environment()
    assert env["SEMCACHED_SERVER_HOST"] == "0.0.0.0"
    assert env["SEMCACHED_STORAGE_DATA_DIR"] == VOLUME
    settings = load_settings(environ=env)  # the image's defaults are valid settings
    assert str(settings.kv.shm_dir) == env["SEMCACHED_KV_SHM_DIR"]
    assert os.fspath(settings.storage.data_dir) == VOLUME
