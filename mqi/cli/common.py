"""What every command shares: consoles, the one-line error contract, JSON output, options."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mqi.errors import MqiError, one_line


class _LazyConsole:
    """A rich Console made on first use: `mqi --help` and quick commands skip importing rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            # soft_wrap: a long line stays one line in a pipe or a log, never cut at 80 columns
            self._console = Console(highlight=False, soft_wrap=True, **self._options)
        return getattr(self._console, name)


out: Any = _LazyConsole()
err: Any = _LazyConsole(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $MQI_CONFIG, then ./mqi.yaml)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON (= --format json).")]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="table (default; plain columns when not a terminal), tsv, csv or json."
    ),
]
UtcOption = Annotated[bool, typer.Option("--utc", help="Show times in UTC instead of local time.")]


def output_format(fmt: str | None, as_json: bool) -> str:
    from mqi.cli.views import FORMATS
    from mqi.errors import UsageError

    chosen = "json" if as_json else (fmt or "table")
    if chosen not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {chosen!r}")
    return chosen


F = TypeVar("F", bound=Callable[..., Any])

_global_config: dict[str, Path | None] = {"path": None}


def set_global_config(path: Path | None) -> None:
    """``mqi --config F COMMAND``: the config every command uses unless it names its own."""
    _global_config["path"] = path


def config_path(path: Path | None) -> Path | None:
    return path or _global_config["path"]


def fail(message: str, code: int) -> typer.Exit:
    """One line on stderr: control characters from names are shown escaped, never sent raw."""
    from mqi.textsafe import escape_control

    sys.stderr.write(f"mqi: error: {escape_control(message)}\n")
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn every error into one line on stderr and the documented exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MqiError as error:
            raise fail(str(error), error.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as error:
            if os.environ.get("MQI_DEBUG"):
                raise
            raise fail(f"unexpected {one_line(error)} (rerun with MQI_DEBUG=1 for details)", 1) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Strict JSON (a value that is not a finite number is null): indented on a terminal,
    one line into a pipe (json's fast encoder cannot indent; 1,000 cases take 0.3 s more)."""
    indent = 2 if sys.stdout.isatty() else None
    try:
        text = json.dumps(data, indent=indent, default=str, allow_nan=False)
    except ValueError:
        from mqi.textsafe import json_safe

        text = json.dumps(json_safe(data), indent=indent, default=str, allow_nan=False)
    sys.stdout.write(text + "\n")


def log(message: str) -> None:
    from mqi.textsafe import escape_control

    sys.stderr.write(escape_control(message) + "\n")
    sys.stderr.flush()


def session(config: Path | None, *, log_to: Callable[[str], None] = log) -> Any:
    """An ``mqi.api`` session for the command's (or the global) config."""
    from mqi import api

    return api.open(config_path(config), log=log_to)
