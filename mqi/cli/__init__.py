"""The `mqi` command line: a thin typer shell over :mod:`mqi.api` (no logic of its own).

Exit codes: 0 success, 1 operational failure, 2 bad input or usage. Errors are one
line on stderr; set MQI_DEBUG=1 to see a traceback for an unexpected failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mqi import __version__
from mqi.cli import cases, operate, qa, web
from mqi.cli.common import fail, out, set_global_config

app = typer.Typer(
    name="mqi",
    help="Slurm-native submitter for MOQUI proton Monte Carlo dose QA.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: fast to start, readable in any log
)


def _version(value: bool) -> None:
    if value:
        out.print(f"mqi {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Config file for every command (default: $MQI_CONFIG, then ./mqi.yaml)."
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="state_dir/logs/mqi.log lines: text or json ($MQI_LOG_FORMAT)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Slurm-native submitter for MOQUI proton Monte Carlo dose QA."""
    set_global_config(config)
    if log_format is not None:
        from mqi.logs import set_format

        try:
            set_format(log_format)
        except ValueError as error:
            raise fail(str(error), 2) from None


cases.register(app)
operate.register(app)
qa.register(app)
web.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
