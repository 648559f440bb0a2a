"""The `hotserve` command: `tensorflow_model_server`'s command line, then a uvicorn server.

Flags are TF Serving's (spec 1.2) plus hotserve's own (see `app.settings`), written
`--flag=value` or `--flag value`; a boolean flag alone means true, and takes `=true|false|1|0`.
Flags given on the command line override `HOTSERVE_<FLAG>` environment variables, which override
the defaults. Exit status: 0 after `--help` or `--version`; after a graceful shutdown, 130 for
SIGINT and, for SIGTERM, killed by the signal (143: uvicorn re-raises it); 255 (TF Serving's
-1) for an unknown flag, a bad value, a configuration TF Serving refuses, or a failed startup.
Unknown positional arguments print the usage and are otherwise ignored, as in TF Serving.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from pydantic import ValidationError

from app import __version__
from app.core.servable import Loader
from app.errors import ConfigError
from app.logs import configure_logging
from app.settings import COMPAT_ONLY_FLAGS, HOTSERVE_FLAGS, TF_SERVING_FLAGS, Settings
from app.shutdown import GracefulServer, ShutdownPlan

logger = logging.getLogger(__name__)

EXIT_FAILURE = 255  # TF Serving returns -1 from main()
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention
USAGE = "usage: hotserve [--flag=value ...]  (hotserve --help lists every flag)\n"
_FLAGS = frozenset(TF_SERVING_FLAGS + HOTSERVE_FLAGS)
_BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}
NO_EFFECT_NOTE = "Accepted for compatibility; no effect in hotserve."


class UsageError(ValueError):
    """The command line cannot be parsed: unknown flag, missing or invalid value."""


@dataclass(frozen=True, slots=True)
class ParsedFlags:
    """The command line split up; `overrides` maps flag name to its (unvalidated) value."""

    overrides: dict[str, str | bool] = field(default_factory=dict)
    positionals: tuple[str, ...] = ()
    show_help: bool = False
    show_version: bool = False


def parse_flags(argv: Sequence[str]) -> ParsedFlags:
    """Split `argv` (without the program name) into flags and positionals; raise `UsageError`."""
    overrides: dict[str, str | bool] = {}
    positionals: list[str] = []
    show_help = show_version = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            positionals.extend(args)
            break
        if not arg.startswith("--"):
            if arg in ("-h", "-help"):
                show_help = True
            elif arg.startswith("-") and arg != "-":
                raise UsageError(f"unknown flag: {arg}")
            else:
                positionals.append(arg)
            continue
        name, has_value, value = arg[2:].partition("=")
        if name == "help":
            show_help = True
        elif name == "version":
            show_version = True
        elif name not in _FLAGS:
            raise UsageError(f"unknown flag: --{name}")
        elif _is_bool_flag(name):
            overrides[name] = _parse_bool(name, value if has_value else "true")
        elif has_value:
            overrides[name] = value
        elif args and not args[0].startswith("--"):
            overrides[name] = args.pop(0)
        else:
            raise UsageError(f"missing value for --{name}")
    return ParsedFlags(overrides, tuple(positionals), show_help, show_version)


def parse_args(argv: Sequence[str]) -> Settings:
    """The `Settings` of a command line (environment variables fill what it leaves out).

    Raises `UsageError` for a malformed command line or an invalid value and `ConfigError` for
    a combination TF Serving refuses to start with. `--help`/`--version` are ignored here.
    """
    return build_settings(parse_flags(argv))


def build_settings(flags: ParsedFlags) -> Settings:
    """`Settings(**flags.overrides)`, logging the flags hotserve accepts but does not act on."""
    try:
        settings = Settings(**flags.overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors()
        )
        raise UsageError(f"invalid value: {problems}") from exc
    for name in flags.overrides:
        if name in COMPAT_ONLY_FLAGS:
            logger.info("--%s is accepted for compatibility, has no effect", name)
    return settings


ENVIRONMENT_NOTES = (
    "Every flag can also be set in the environment as HOTSERVE_<FLAG>"
    " (e.g. HOTSERVE_REST_API_PORT=9000).",
    "MODEL_NAME and MODEL_BASE_PATH are read as in the TF Serving docker image:"
    " the model $MODEL_BASE_PATH/$MODEL_NAME is served when no model flag is given.",
)


def format_help() -> str:
    """Every flag with its default and description: TF Serving's, then hotserve's."""
    defaults = Settings.model_construct()  # the defaults, without reading the environment
    lines = [USAGE, "TensorFlow Serving flags (tensorflow_model_server):"]
    lines += [_describe(name, defaults) for name in TF_SERVING_FLAGS]
    lines += ["", "hotserve flags:"]
    lines += [_describe(name, defaults) for name in HOTSERVE_FLAGS]
    lines += [
        "",
        "Flags accepted for compatibility only (no effect): "
        + ", ".join(f"--{name}" for name in TF_SERVING_FLAGS if name in COMPAT_ONLY_FLAGS),
        *ENVIRONMENT_NOTES,
        "The same server without this command line: uvicorn --factory app.main:create_app"
        " (settings from the environment only; host and port are uvicorn's flags).",
        "",
    ]
    return "\n".join(lines)


def format_markdown() -> str:
    """The README's flag tables (between its `flags:begin`/`flags:end` markers), from the same
    fields as `--help`. Machine-dependent defaults show their factory's docstring."""
    lines: list[str] = []
    for title, names in (
        ("TensorFlow Serving flags (`tensorflow_model_server`)", TF_SERVING_FLAGS),
        ("hotserve's own flags", HOTSERVE_FLAGS),
    ):
        lines += [f"**{title}**", "", "| flag | type | default | what |", "|---|---|---|---|"]
        lines += [_markdown_row(name) for name in names]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, serve: Callable[[Settings], int] | None = None) -> int:
    """Run the `hotserve` command; returns the exit status. `serve` replaces the uvicorn run."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["publish"]:  # `hotserve publish SRC BASE_PATH [--version N]`
        from app.publish import main as publish_main

        return publish_main(args[1:])
    # Provisional, so that notes logged while the settings are built are shown; create_app
    # applies --log_level with the same handler.
    configure_logging("info")
    try:
        flags = parse_flags(args)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n{USAGE}")
        return EXIT_FAILURE
    if flags.show_help:
        sys.stdout.write(format_help())
        return 0
    if flags.show_version:
        sys.stdout.write(f"hotserve {__version__} (TensorFlow Serving REST compatible)\n")
        return 0
    if flags.positionals:
        sys.stderr.write(f"unknown argument: {flags.positionals[0]}\n{USAGE}")
    try:
        settings = build_settings(flags)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n{USAGE}")
        return EXIT_FAILURE
    except ConfigError as exc:
        sys.stderr.write(f"Failed to start server. Error: {exc.code}: {exc.message}\n")
        return EXIT_FAILURE
    if settings.malloc_huge_pages and serve is None and argv is None:
        # The command itself: re-running it re-reads sys.argv.
        from app.hugepages import reexec_with_hugepages

        reexec_with_hugepages()  # once, before any model is loaded: see app.hugepages
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1 and serve is None:
        from app.workers import supervise

        return supervise(settings, flags.overrides)
    return (serve or serve_with_uvicorn)(settings)


def serve_with_uvicorn(settings: Settings, loader: Loader | None = None) -> int:
    """Serve until a shutdown signal; 255 if the app could not be built (a bad monitoring
    config) or failed to start (e.g. an unreadable models.config).

    `loader` replaces the TensorFlow loader (tests serve fakes through the real command).
    After SIGTERM uvicorn re-raises the signal, so the process ends as killed by it (143).
    Signals follow the shutdown contract of `app.shutdown` (grace, budget, second signal).
    """
    app = build_app_or_fail(settings, loader)
    if app is None:
        return EXIT_FAILURE
    return run_server(app, settings)


def build_app_or_fail(settings: Settings, loader: Loader | None = None) -> Any:
    """`create_app(settings)`, or None after printing TF Serving's startup error."""
    # Imported here, not at the top: app.main pulls in the whole application, which --help,
    # --version and flag errors do not need. Importing it builds nothing.
    from app.main import create_app

    try:
        return create_app(settings, loader=loader)
    except ConfigError as exc:
        sys.stderr.write(f"Failed to start server. Error: {exc.code}: {exc.message}\n")
        return None


def run_server(app: Any, settings: Settings, sockets: list[socket.socket] | None = None) -> int:
    """Run uvicorn on `app` (on `sockets` when given: `--workers`) until a shutdown signal."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.rest_api_port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go through hotserve's handler (text or JSON)
        access_log=False,  # hotserve's own access log carries the request ID (app.tracing)
        lifespan="on",
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_seconds),
        **tls_options(settings),
    )
    plan = ShutdownPlan(settings.shutdown_grace_seconds, settings.shutdown_timeout_seconds)

    def on_signal(deadline: float) -> None:
        app.state.shutting_down = True
        app.state.shutdown_deadline = deadline

    server = GracefulServer(config, plan, on_signal)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        # uvicorn re-raises the captured SIGINT once its graceful shutdown is done.
        logger.info("Interrupted; server shut down")
        return EXIT_INTERRUPTED
    if not server.started:
        logger.error("Failed to start server")
        return EXIT_FAILURE
    return 0


_serve_with_uvicorn = serve_with_uvicorn  # the name tests/test_entrypoints.py imports


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS keyword arguments for the REST port (empty: plain HTTP)."""
    if not settings.rest_ssl_certfile:
        return {}
    return {
        "ssl_certfile": settings.rest_ssl_certfile,
        "ssl_keyfile": settings.rest_ssl_keyfile or None,
    }


def _is_bool_flag(name: str) -> bool:
    return Settings.model_fields[name].annotation is bool


def _parse_bool(name: str, value: str) -> bool:
    parsed = _BOOL_WORDS.get(value.lower())
    if parsed is None:
        raise UsageError(f"invalid value for --{name}: {value!r} (expected true, false, 1 or 0)")
    return parsed


def _describe(name: str, defaults: Settings) -> str:
    info = Settings.model_fields[name]
    return f"  --{name}={_show(getattr(defaults, name))}  ({_type_name(info.annotation)})\n" + (
        f"        {_description(name)}"
    )


def _description(name: str) -> str:
    text = str(Settings.model_fields[name].description)
    return f"{text}. {NO_EFFECT_NOTE}" if name in COMPAT_ONLY_FLAGS else text


def _markdown_row(name: str) -> str:
    info = Settings.model_fields[name]
    if info.default_factory is not None:
        default = (info.default_factory.__doc__ or "computed").strip()
    else:
        default = f"`{_show(info.default)}`"
    cells = (f"`--{name}`", _type_name(info.annotation), default, _description(name))
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _show(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '""'
    return str(value)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(choice) for choice in typing.get_args(annotation))
    names = {bool: "bool", int: "int", float: "float", str: "string"}
    return names.get(annotation, "path")
