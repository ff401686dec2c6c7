"""The `mqi` command line: a thin shell over the library (no logic of its own).

Exit codes: 0 success, 1 operational failure, 2 bad input or usage. Errors are one
line on stderr; set MQI_DEBUG=1 to see a traceback for an unexpected failure.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mqi.config import Config, example_config_text, load_config
from mqi.errors import MqiError

app = typer.Typer(
    name="mqi",
    help="Slurm-native submitter for MOQUI proton Monte Carlo dose QA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $MQI_CONFIG, then ./mqi.yaml)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"mqi: error: {message}", markup=False, soft_wrap=True)
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
            raise fail(
                f"unexpected {type(error).__name__}: {error} (rerun with MQI_DEBUG=1 for details)", 1
            ) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def config_for(path: Path | None) -> Config:
    return load_config(path)


@app.command()
@handle_errors
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for mqi.yaml.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite an existing mqi.yaml.")] = False,
) -> None:
    """Write a commented example mqi.yaml."""
    target = directory / "mqi.yaml"
    if target.exists() and not force:
        raise fail(f"{target} exists; pass --force to overwrite it", 2)
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(example_config_text(), encoding="utf-8")
    out.print(f"wrote {target}: edit cluster, slurm and moqui, then run `mqi doctor`")


@app.command()
@handle_errors
def doctor(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check config, connection, host key, workspace, Slurm, partition, engine and remote Python."""
    from mqi.doctor import checks_json, run_checks
    from mqi.transport import open_transport

    cfg = config_for(config)
    transport = open_transport(cfg.cluster)
    try:
        checks = run_checks(cfg, transport)
    finally:
        transport.close()
    if as_json:
        print_json(checks_json(checks))
    else:
        table = Table(title="mqi doctor")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for check in checks:
            table.add_row(check.name, "[green]pass[/]" if check.ok else "[red]FAIL[/]", check.detail)
        out.print(table)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
