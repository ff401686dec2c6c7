"""`mqi serve` (the dashboard) and `mqi history` (a case's audit trail)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from mqi.cli.common import ConfigOption, JsonOption, config_path, handle_errors, out, print_json, session

LogFormatOption = Annotated[
    str | None,
    typer.Option("--log-format", help="Log lines as text or json (default: $MQI_LOG_FORMAT, then text)."),
]


def register(app: typer.Typer) -> None:
    for command in (serve, history):
        app.command()(handle_errors(command))


def serve(
    bind: Annotated[
        str | None, typer.Option("--bind", help="HOST:PORT to listen on (default: web.bind, 127.0.0.1:8050).")
    ] = None,
    config: ConfigOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """The dashboard, its JSON API under /api/ and Prometheus /metrics (until Ctrl-C)."""
    import os

    import uvicorn

    from mqi.config import CONFIG_ENV, load_config
    from mqi.errors import UsageError
    from mqi.logs import set_format

    try:
        set_format(log_format)
    except ValueError as error:
        raise UsageError(str(error)) from None
    loaded = load_config(config_path(config))
    host, port = loaded.web.check_bind(bind or loaded.web.bind)
    if loaded.source is not None:
        os.environ[CONFIG_ENV] = str(loaded.source)  # the app factory loads the same file
    out.print(f"mqi serve: dashboard on http://{bind or loaded.web.bind}/ (Ctrl-C stops it)")
    # By import string: the CLI does not import the web app (DESIGN.md: nothing imports a shell).
    uvicorn.run(
        "mqi.web.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


def history(
    case_id: Annotated[str, typer.Argument(help="The case whose audit trail to print.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every recorded change of a case, its beams and its jobs, oldest first."""
    with session(config) as mqi:
        data = mqi.history(case_id)
    if as_json:
        print_json(data)
        return
    out.print(_history_table(data))


def _history_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"history of {data['case_id']}", title_justify="left")
    for column in ("when (UTC)", "what", "change", "reason"):
        table.add_column(column)
    for event in data["events"]:
        what = event["entity"] if event["entity"] == "case" else f"{event['entity']} {event['entity_key']}"
        if event["field"] != "status":
            what += f" {event['field']}"
        change = f"{event['old'] or '-'} -> {event['new'] or '-'}"
        table.add_row(event["at"], what, change, event["reason"] or "")
    return table
