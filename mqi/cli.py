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

from mqi import views
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


@app.command()
@handle_errors
def check(
    case_dir: Annotated[Path, typer.Argument(help="The case folder to read and check.")],
    plan: Annotated[str | None, typer.Option("--plan", help="SOP Instance UID of the plan to use.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Read and check a case folder; nothing is submitted. Exit 2 when it is invalid."""
    from mqi.intake import IntakeOptions, read_case
    from mqi.intake.report import render_check

    cfg = config_for(config) if (config or _has_default_config()) else None
    options = IntakeOptions.from_config(cfg, plan_uid=plan) if cfg else IntakeOptions(plan_uid=plan)
    result = read_case(case_dir, options)
    if as_json:
        print_json(result.to_json())
    else:
        out.print(render_check(result))
    if not result.valid:
        raise typer.Exit(2)


def _has_default_config() -> bool:
    from mqi.config import find_config_file

    return find_config_file().exists()


class _RichUpload:
    """A progress bar (bytes, rate) for uploads, shown only on a terminal."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
        )
        self._task: Any = None

    def start(self, total_bytes: int, files: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(f"uploading {files} files", total=total_bytes)

    def advance(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def finish(self) -> None:
        self._progress.stop()


@app.command()
@handle_errors
def submit(
    case_dir: Annotated[Path, typer.Argument(help="The case folder to submit.")],
    priority: Annotated[
        str | None, typer.Option("--priority", "-p", help="A priority class from slurm.priorities.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Render the bundle locally and show the sbatch lines only.")
    ] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where --dry-run writes the bundle.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Cancel the case's existing jobs and submit it again.")
    ] = False,
    plan: Annotated[str | None, typer.Option("--plan", help="SOP Instance UID of the plan to use.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit one case folder: check, render, upload, and queue its Slurm chain once."""
    cfg = config_for(config)
    if dry_run:
        _dry_run(cfg, case_dir, out_dir, priority, plan, as_json)
        return
    from mqi.store import Store
    from mqi.submit import CaseRejected, Submitter
    from mqi.transport import open_transport

    transport = open_transport(cfg.cluster)
    progress = _RichUpload() if (sys.stderr.isatty() and not as_json) else None
    try:
        with Store(cfg.db_path) as store:
            submitter = Submitter(
                cfg, store, transport, log=lambda m: err.print(m, markup=False), progress=progress
            )
            try:
                outcome = submitter.submit(case_dir, priority=priority, force=force, plan_uid=plan)
            except CaseRejected as rejected:
                if as_json:
                    print_json(
                        {**rejected.result.to_json(), "case_id": rejected.case_id, "status": "rejected"}
                    )
                raise
    finally:
        transport.close()
    if as_json:
        print_json(outcome.to_json())
        return
    for warning in outcome.warnings:
        err.print(f"warning: {warning}", markup=False)
    jobs = ", ".join(f"{step} {job}" for step, job in outcome.jobs.items() if job)
    if outcome.already:
        out.print(f"{outcome.case_id} is already {outcome.status} ({jobs}); use --force to submit it again")
    elif outcome.adopted:
        out.print(f"{outcome.case_id} was already in Slurm; adopted its jobs: {jobs}")
    else:
        out.print(f"submitted {outcome.case_id}: {jobs}")


def _dry_run(
    cfg: Config, case_dir: Path, out_dir: Path | None, priority: str | None, plan: str | None, as_json: bool
) -> None:
    from mqi.intake import IntakeOptions, read_case
    from mqi.render import dry_run

    result = read_case(case_dir, IntakeOptions.from_config(cfg, plan_uid=plan))
    if not result.valid or result.case is None:
        first = result.errors[0].message if result.errors else "invalid case"
        raise fail(f"case rejected: {first} (see `mqi check {case_dir}`)", 2)
    target = out_dir or (cfg.bundles_dir / "dry-run" / result.case.case_uid)
    rendered = dry_run(result.case, cfg, target, priority=priority)
    if as_json:
        print_json(
            {
                "case_id": result.case.case_id,
                "case_uid": result.case.case_uid,
                "status": "dry-run",
                "bundle": str(rendered.path),
                "sbatch": rendered.sbatch_lines,
                "warnings": rendered.warnings,
            }
        )
        return
    for warning in rendered.warnings:
        err.print(f"warning: {warning}", markup=False)
    out.print(f"bundle for {result.case.case_id} written to {rendered.path} (nothing submitted)")
    for line in rendered.sbatch_lines:
        out.print(line, markup=False, soft_wrap=True)


# -- operating ------------------------------------------------------------------------


class _Session:
    """Config, store and one transport for the length of one command."""

    def __init__(self, config_path: Path | None, *, need_cluster: bool = True) -> None:
        from mqi.store import Store
        from mqi.transport import open_transport

        self.config = config_for(config_path)
        self.store = Store(self.config.db_path)
        self.transport = open_transport(self.config.cluster) if need_cluster else None

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.transport is not None:
            self.transport.close()
        self.store.close()


def _log(message: str) -> None:
    err.print(message, markup=False, soft_wrap=True)


@app.command()
@handle_errors
def poll(
    wait: Annotated[bool, typer.Option("--wait", help="Keep polling until no case is active.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after S seconds.")] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing unless something failed.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Mirror Slurm's job states into the database and bring finished results home."""
    from mqi.poll import Poller, poll_until_done

    with _Session(config) as session:
        assert session.transport is not None
        poller = Poller(session.config, session.store, session.transport, log=_log)

        def show(report: Any) -> None:
            if as_json or quiet:
                return
            for case_id in report.delivered:
                out.print(f"delivered {case_id}")
            for case_id in report.resubmitted:
                out.print(f"resubmitted {case_id} (its jobs were lost in Slurm)")

        if wait:
            report = poll_until_done(
                poller, timeout=timeout, interval=session.config.poll.interval_seconds, on_cycle=show
            )
        else:
            report = poller.poll_once()
            show(report)
    if as_json:
        print_json(report.to_json())
    elif not quiet:
        out.print(f"{report.active_cases} active case(s); {report.jobs_tracked} job(s) tracked")
    if report.errors:
        raise typer.Exit(1)


@app.command()
@handle_errors
def status(
    case_id: Annotated[str | None, typer.Argument(help="One case (default: all cases).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cases from the database (run `mqi poll` to refresh them)."""
    with _Session(config, need_cluster=False) as session:
        store = session.store
        if case_id:
            case = store.require_case(case_id)
            data = views.case_status(store, case)
            if as_json:
                print_json(data)
            else:
                out.print(views.case_detail(data))
            return
        cases = store.list_cases()
        if as_json:
            print_json([views.case_status(store, case) for case in cases])
            return
        if not cases:
            out.print("no cases yet: `mqi submit CASE_DIR` or put folders in watch_dir for `mqi scan`")
            return
        out.print(views.cases_table(store, cases))


@app.command()
@handle_errors
def queue(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """This tool's live jobs in Slurm (squeue), with pending reasons."""
    from mqi.actions import live_queue

    with _Session(config) as session:
        assert session.transport is not None
        rows = live_queue(session.store, session.transport)
    if as_json:
        print_json([row.to_json() for row in rows])
        return
    if not rows:
        out.print("no mqi jobs in the queue")
        return
    table = Table(title="mqi jobs in Slurm")
    for column in ("job", "case", "step", "state", "reason", "node", "started"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.job_id,
            row.case_id or "?",
            row.step,
            row.state,
            row.reason or "",
            row.node or "",
            row.started or "",
        )
    out.print(table)


@app.command()
@handle_errors
def cancel(case_id: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Cancel every job of a case (scancel); the case becomes cancelled."""
    from mqi.actions import cancel_case

    with _Session(config) as session:
        assert session.transport is not None
        cancelled = cancel_case(session.store, session.transport, case_id)
    if as_json:
        print_json({"case_id": case_id, "status": "cancelled", "cancelled_jobs": cancelled})
    else:
        out.print(f"cancelled {case_id}" + (f" (jobs {', '.join(cancelled)})" if cancelled else ""))


@app.command()
@handle_errors
def retry(
    case_id: str,
    beam: Annotated[list[int] | None, typer.Option("--beam", "-b", help="Beam number (repeatable).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resubmit only the failed beams (or the named ones) and a new post job; results merge."""
    from mqi.actions import retry_case

    with _Session(config) as session:
        assert session.transport is not None
        ids = retry_case(session.config, session.store, session.transport, case_id, beam or None)
    if as_json:
        print_json({"case_id": case_id, "status": "submitted", "jobs": ids})
    else:
        out.print(f"retrying {case_id}: simulate {ids['simulate']}, post {ids['post']}")


@app.command()
@handle_errors
def top(case_id: str, config: ConfigOption = None) -> None:
    """Move a queued case ahead of your other pending jobs (scontrol top)."""
    from mqi.actions import top_case

    with _Session(config) as session:
        assert session.transport is not None
        jobs = top_case(session.store, session.transport, case_id)
    out.print(f"moved {case_id} to the top of your queue ({', '.join(jobs)})")


@app.command()
@handle_errors
def logs(
    case_id: str,
    beam: Annotated[int | None, typer.Option("--beam", "-b", help="Beam number (simulation log).")] = None,
    step: Annotated[str | None, typer.Option("--step", "-s", help="prepare, simulate or post.")] = None,
    config: ConfigOption = None,
) -> None:
    """Print a job's Slurm output from the cluster."""
    from mqi.actions import read_log

    with _Session(config) as session:
        assert session.transport is not None
        text = read_log(session.store, session.transport, case_id, beam=beam, step=step)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
@handle_errors
def scan(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only what was submitted or failed.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit every ready, not yet known case folder under watch_dir (run it from cron)."""
    from mqi.scan import scan as run_scan

    with _Session(config) as session:
        assert session.transport is not None
        report = run_scan(session.config, session.store, session.transport, log=_log)
    if as_json:
        print_json(report.to_json())
    elif report.skipped_busy:
        if not quiet:
            out.print("another mqi scan is running; nothing to do")
    else:
        for case_id in report.submitted:
            out.print(f"submitted {case_id}")
        for case_id in report.rejected:
            out.print(f"rejected {case_id} (`mqi status {case_id}` lists the problems)")
        if not quiet:
            for line in report.waiting:
                out.print(f"not ready: {line}", markup=False)
            out.print(
                f"{len(report.submitted)} submitted, {len(report.rejected)} rejected, "
                f"{len(report.waiting)} not ready, {report.known} already known"
            )
    if report.errors:
        raise typer.Exit(1)


@app.command()
@handle_errors
def run(
    interval: Annotated[
        float | None, typer.Option(help="Seconds between cycles (poll.interval_seconds).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Scan and poll for ever (for systemd); SIGTERM ends it cleanly after the current cycle."""
    import signal
    import time

    from mqi.poll import Poller
    from mqi.scan import scan as run_scan

    stop = {"now": False}

    def request_stop(_signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with _Session(config) as session:
        assert session.transport is not None
        every = interval or session.config.poll.interval_seconds
        _log(f"mqi run: scanning {session.config.watch_dir} and polling every {every:.0f}s")
        while not stop["now"]:
            try:
                scanned = run_scan(session.config, session.store, session.transport, log=_log)
                for case_id in scanned.submitted:
                    _log(f"submitted {case_id}")
                polled = Poller(session.config, session.store, session.transport, log=_log).poll_once()
                for case_id in polled.delivered:
                    _log(f"delivered {case_id}")
            except MqiError as error:
                _log(f"cycle failed, retrying next cycle: {error}")
            deadline = time.monotonic() + every
            while not stop["now"] and time.monotonic() < deadline:
                time.sleep(min(0.5, every))
    _log("mqi run: stopped")


cron_app = typer.Typer(help="Manage the crontab line that runs `mqi scan` and `mqi poll`.")
app.add_typer(cron_app, name="cron")


@cron_app.command("install")
@handle_errors
def cron_install(
    every: Annotated[int, typer.Option(help="Minutes between runs.", min=1, max=59)] = 1,
    config: ConfigOption = None,
) -> None:
    """Add (or replace) the mqi line in your crontab."""
    from mqi import cron

    line = cron.install(config_for(config), every)
    out.print(f"installed: {line}", markup=False, soft_wrap=True)


@cron_app.command("show")
@handle_errors
def cron_show() -> None:
    """Print the mqi line of your crontab."""
    from mqi import cron

    line = cron.show()
    if line is None:
        out.print("no mqi line in your crontab (`mqi cron install` adds one)")
        raise typer.Exit(1)
    out.print(line, markup=False, soft_wrap=True)


@cron_app.command("remove")
@handle_errors
def cron_remove() -> None:
    """Remove the mqi line from your crontab; other lines stay."""
    from mqi import cron

    out.print("removed the mqi line" if cron.remove() else "there was no mqi line")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
