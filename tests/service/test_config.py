"""Settings: precedence of the four sources and every way a value is rejected."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from semcached.cachepolicy.load import LoadTarget
from semcached.errors import ConfigError
from semcached.service.cli import main, reference_table
from semcached.service.config import Settings, iter_setting_specs, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "semcached.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_setup() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.storage.data_dir == Path("semcached-data")
    assert settings.index.backend == "hnswlib"


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        '[server]\nport = 1111\nhost = "0.0.0.0"\nworker_threads = 3\n[log]\nlevel = "debug"\n',
    )
    settings = load_settings(
        config_file=config,
        environ={"SEMCACHED_SERVER_PORT": "2222", "SEMCACHED_SERVER_HOST": "127.0.0.2"},
        overrides={"server.port": "3333"},
    )
    assert settings.server.port == 3333  # flag beats env and file
    assert settings.server.host == "127.0.0.2"  # env beats file
    assert settings.server.worker_threads == 3  # file beats default
    assert settings.log.level == "debug"
    assert settings.log.format == "plain"  # default


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path, "[server]\nport = 4444\n")
    assert load_settings(environ={"SEMCACHED_CONFIG": str(config)}).server.port == 4444


def test_explicit_config_file_beats_environment_path(tmp_path: Path) -> None:
    first = write(tmp_path, "[server]\nport = 1\n")
    second = tmp_path / "other.toml"
    second.write_text("[server]\nport = 2\n")
    settings = load_settings(config_file=second, environ={"SEMCACHED_CONFIG": str(first)})
    assert settings.server.port == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("yes", True), ("off", False), ("FALSE", False)],
)
def test_boolean_spellings(raw: str, expected: bool) -> None:
    settings = load_settings(environ={"SEMCACHED_SERVER_ACCESS_LOG": raw})
    assert settings.server.access_log is expected


def test_numbers_from_text() -> None:
    settings = load_settings(
        environ={"SEMCACHED_SERVER_MAX_BODY_BYTES": "1_048_576"},
        overrides={"server.shutdown_timeout_s": "2.5"},
    )
    assert settings.server.max_body_bytes == 1_048_576
    assert settings.server.shutdown_timeout_s == 2.5


def test_toml_int_accepted_for_float(tmp_path: Path) -> None:
    config = write(tmp_path, "[server]\nshutdown_timeout_s = 3\n")
    assert load_settings(config_file=config, environ={}).server.shutdown_timeout_s == 3.0


def test_name_lists_from_every_source(tmp_path: Path) -> None:
    config = write(tmp_path, '[semantic]\nnamespaces = ["a", "b"]\n')
    assert load_settings(config_file=config, environ={}).semantic.namespaces == ("a", "b")
    env = {"SEMCACHED_SEMANTIC_NAMESPACES": " team-1, team-2 ,"}
    assert load_settings(environ=env).semantic.namespaces == ("team-1", "team-2")
    bad = write(tmp_path, "[semantic]\nnamespaces = [1]\n")
    with pytest.raises(ConfigError, match="expected a list of names"):
        load_settings(config_file=bad, environ={})


def test_path_expands_user(tmp_path: Path) -> None:
    settings = load_settings(environ={"SEMCACHED_STORAGE_DATA_DIR": "~/cache"})
    assert settings.storage.data_dir == Path("~/cache").expanduser()


REJECTIONS = [
    # (source kind, input, fragments the message must contain)
    ("file", "[server]\nprot = 1\n", ["config file", "unknown key 'server.prot'"]),
    ("file", "[nosuch]\nx = 1\n", ["config file", "unknown key 'nosuch.x'"]),
    ("file", "server = 1\n", ["config file", "expected a [server] table"]),
    ("file", '[server]\nport = "80"\n', ["config file", "server.port", "expected an integer"]),
    ("file", "[server]\nport = true\n", ["server.port", "expected an integer"]),
    ("file", "[server]\nport = 70000\n", ["server.port", "must be <= 65535"]),
    ("file", "[server]\nport = -1\n", ["server.port", "must be >= 0"]),
    ("file", "[server]\naccess_log = 1\n", ["server.access_log", "expected a boolean"]),
    ("file", "[server]\nhost = 5\n", ["server.host", "expected a string"]),
    ("file", '[log]\nlevel = "loud"\n', ["log.level", "expected one of", "'debug'"]),
    ("file", "[server]\nshutdown_timeout_s = nan\n", ["shutdown_timeout_s", "finite number"]),
    ("file", "[storage]\ndata_dir = 3\n", ["storage.data_dir", "expected a path"]),
    ("file", "[server\nport = 1\n", ["config file", "invalid TOML"]),
    ("env", {"SEMCACHED_SERVER_PORT": "80a"}, ["environment SEMCACHED_SERVER_PORT", "integer"]),
    (
        "env",
        {"SEMCACHED_SERVR_PORT": "80"},
        ["environment", "unknown variable SEMCACHED_SERVR_PORT"],
    ),
    ("env", {"SEMCACHED_SERVER_ACCESS_LOG": "maybe"}, ["SEMCACHED_SERVER_ACCESS_LOG", "boolean"]),
    ("env", {"SEMCACHED_LOG_FORMAT": "xml"}, ["SEMCACHED_LOG_FORMAT", "one of"]),
    ("env", {"SEMCACHED_SERVER_WORKER_THREADS": "0"}, ["server.worker_threads", ">= 1"]),
    ("cli", {"server.port": "eighty"}, ["command line --server.port", "integer"]),
    ("cli", {"server.nope": "1"}, ["command line", "unknown option --server.nope"]),
    ("cli", {"server.drain_delay_s": "-1"}, ["server.drain_delay_s", ">= 0"]),
]


@pytest.mark.parametrize(("kind", "given", "fragments"), REJECTIONS)
def test_rejections_name_key_and_source(
    tmp_path: Path, kind: str, given: object, fragments: list[str]
) -> None:
    if kind == "file":
        assert isinstance(given, str)
        kwargs: dict[str, Any] = {"config_file": write(tmp_path, given), "environ": {}}
    elif kind == "env":
        kwargs = {"environ": given}
    else:
        kwargs = {"environ": {}, "overrides": given}
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(config_file=tmp_path / "absent.toml", environ={})


def test_cross_field_check() -> None:
    with pytest.raises(ConfigError, match="lmdb_initial_map_bytes must not exceed"):
        load_settings(
            environ={
                "SEMCACHED_STORAGE_LMDB_INITIAL_MAP_BYTES": str(8 << 20),
                "SEMCACHED_STORAGE_LMDB_MAX_MAP_BYTES": str(4 << 20),
            }
        )


def test_non_setting_variables_are_ignored() -> None:
    # The build flag shares the prefix but is not a setting.
    assert load_settings(environ={"SEMCACHED_NATIVE": "1"}) == Settings()


def test_redacted_hides_secrets() -> None:
    settings = load_settings(environ={"SEMCACHED_SERVER_AUTH_TOKEN": "s3cret"})
    assert settings.server.auth_token == "s3cret"
    redacted = settings.redacted()
    assert redacted["server"]["auth_token"] == "***"
    assert redacted["storage"]["data_dir"] == "semcached-data"


def test_every_setting_type_is_supported() -> None:
    # Every key's default must survive a round trip through the text parser.
    for spec in iter_setting_specs():
        if spec.type is bool:
            text = str(spec.default).lower()
        elif isinstance(spec.default, tuple):
            text = ",".join(spec.default)
        else:
            text = str(spec.default)
        settings = load_settings(environ={}, overrides={spec.name: text})
        assert spec.value_in(settings) == spec.default


def test_cli_rejects_bad_config_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--server.port", "x"]) == 2
    assert "server.port" in capsys.readouterr().err


def test_cli_config_prints_effective_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--server.port", "9999"]) == 0
    assert '"port": 9999' in capsys.readouterr().out


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert reference_table() in readme, "regenerate with: semcached config --reference"


def test_category_eviction_setting(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[categories.code]\neviction = "s3fifo"\n[categories.legal]\neviction = "onebit"\n'
    )
    settings = load_settings(config_file=path, environ={})
    assert settings.categories.resolve("code").eviction == "s3fifo"
    assert settings.categories.resolve("legal").eviction == "onebit"
    assert settings.categories.resolve(None).eviction == "s3fifo"
    path.write_text('[categories.code]\neviction = "arc"\n')
    with pytest.raises(
        ConfigError, match=r"categories.code.*eviction.*one of 'lru', 's3fifo', 'onebit'"
    ):
        load_settings(config_file=path, environ={})


def test_load_section_and_per_model_targets(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[load]\nqueue_depth_target = 8\n[load_models."gpt-4o"]\nlatency_ms_target = 500\n'
        "[load_models.small]\nqueue_depth_target = 2\nlatency_ms_target = 0\n"
    )
    settings = load_settings(
        config_file=config, environ={"SEMCACHED_LOAD_LATENCY_MS_TARGET": "900"}
    )
    assert settings.load_target("gpt-4o") == LoadTarget("gpt-4o", 8.0, 500.0)
    assert settings.load_target("small") == LoadTarget("small", 2.0, 0.0)
    assert settings.load_target("other") == LoadTarget("other", 8.0, 900.0)
    assert settings.load.tracker().engage == 1.0
    assert settings.redacted()["load_models"]["small"]["queue_depth"] == 2.0


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[load]\nengage = 0.5\nrelease = 0.6\n", "load.release < load.engage"),
        ("[load]\nsaturate = 0.5\n", "load.engage <= load.saturate"),
        ('[load_models."m"]\nqueue_depth = 3\n', "unknown key 'load_models.m.queue_depth'"),
        ('[load_models."m"]\nqueue_depth_target = -1\n', "must be >= 0"),
        ("load_models = 1\n", "expected [load_models"),
    ],
)
def test_bad_load_settings(tmp_path: Path, toml: str, fragment: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_settings(config_file=config, environ={})
