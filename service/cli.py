"""The ``semcached`` command: ``serve``, ``config``, ``token``, ``version``.

Every setting is also a flag named by its dotted key (``--server.port 9000``);
``semcached config --reference`` prints the table of keys found in the README.
``semcached token new`` prints a fresh token and the line of the tokens file that
admits it; ``semcached token hash`` reads a token on stdin (never from the command
line, which other users can see) and prints its SHA-256.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from semcached._version import __version__
from semcached.cachepolicy.categories import CATEGORY_FIELD_HELP, CategoryTable
from semcached.errors import ConfigError
from semcached.service.config import (
    CONFIG_ENV,
    Settings,
    SettingSpec,
    iter_setting_specs,
    load_settings,
)

__all__ = ["main", "reference_table"]

log = logging.getLogger("semcached.cli")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"TOML settings file (default: ${CONFIG_ENV} if set)"
    )
    group = parser.add_argument_group("settings (override environment and file)")
    for spec in iter_setting_specs():
        group.add_argument(
            spec.flag,
            dest=spec.name,
            metavar=spec.key.upper(),
            default=argparse.SUPPRESS,
            help=f"{spec.help} [env {spec.env}]",
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcached", description="Semantic and chunk KV cache daemon for LLM serving."
    )
    parser.add_argument("--version", action="version", version=f"semcached {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon")
    _add_setting_flags(serve)
    config = commands.add_parser("config", help="print the effective settings as JSON")
    _add_setting_flags(config)
    config.add_argument(
        "--reference", action="store_true", help="print the settings reference (Markdown)"
    )
    token = commands.add_parser("token", help="make tokens and their tokens-file digests")
    token.add_argument(
        "action",
        choices=("new", "hash"),
        help="new: a random token and its sha256; hash: the sha256 of a token read on stdin",
    )
    commands.add_parser("version", help="print the version")
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        spec.name: getattr(args, spec.name)
        for spec in iter_setting_specs()
        if hasattr(args, spec.name)
    }
    return load_settings(config_file=args.config, overrides=overrides)


def _format_default(spec: SettingSpec) -> str:
    if spec.type is bool:
        return "true" if spec.default else "false"
    if isinstance(spec.default, tuple):
        return "[" + ", ".join(f'"{x}"' for x in spec.default) + "]"
    if isinstance(spec.default, str | Path):
        return f'"{spec.default}"'
    return str(spec.default)


def reference_table() -> str:
    """The Markdown table of every setting: key, env variable, default, meaning; then
    the keys of a ``[categories.<name>]`` table."""
    rows = ["| key (TOML / flag) | environment | default | meaning |", "|---|---|---|---|"]
    for spec in iter_setting_specs():
        meaning = spec.help
        if spec.choices:
            meaning += " One of: " + ", ".join(f"`{c}`" for c in spec.choices) + "."
        rows.append(f"| `{spec.name}` | `{spec.env}` | `{_format_default(spec)}` | {meaning} |")
    # Category keys exist only in the TOML file; defaults are the `default` category's.
    default = CategoryTable().resolve(None)
    for key, meaning in CATEGORY_FIELD_HELP.items():
        value = getattr(default, key)
        if isinstance(value, tuple):
            shown = "[" + ", ".join(f'"{x}"' for x in value) + "]"
        elif value is None:
            shown = "unset"
        else:
            shown = f'"{value}"' if isinstance(value, str) else str(value).lower()
        rows.append(f"| `categories.<name>.{key}` | (TOML only) | `{shown}` | {meaning} |")
    return "\n".join(rows)


def _token(action: str) -> int:
    from semcached.service.auth.tokens import new_token, token_digest

    if action == "new":
        token = new_token()
        print(f"token:  {token}")
        print(f'sha256 = "{token_digest(token).hex()}"')
        return 0
    token = sys.stdin.readline().strip()
    if not token:
        print("semcached: token hash: give the token on stdin", file=sys.stderr)
        return 2
    print(token_digest(token).hex())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "token":
        return _token(args.action)
    if args.command == "config" and args.reference:
        print(reference_table())
        return 0
    try:
        settings = _settings_from(args)
    except ConfigError as exc:
        print(f"semcached: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        sys.stdout.write(orjson.dumps(settings.redacted(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return 0

    from semcached.service.http.server import run
    from semcached.service.logs import configure_logging

    configure_logging(settings.log)
    if getattr(args, "server.auth_token", None):
        log.warning(
            "--server.auth_token is visible to every user of this host in the process "
            "list; give it as SEMCACHED_SERVER_AUTH_TOKEN or in the TOML file, or use "
            "auth.tokens_file"
        )
    try:
        return run(settings, reread_settings=lambda: _settings_from(args))
    except ConfigError as exc:  # found while building the app (e.g. a missing extra)
        print(f"semcached: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
