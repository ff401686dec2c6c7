"""Commands that follow and act on submitted cases: poll, status, queue, cancel, retry, top,
logs, scan, run, and the crontab line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from mqi.cli.common import (
    ConfigOption,
    FormatOption,
    JsonOption,
    UtcOption,
    config_path,
    handle_errors,
    log,
    out,
    output_format,
    print_json,
    session,
)


def register(app: typer.Typer) -> None:
    for command in (poll, status, queue, cancel, retry, top, logs, scan, run, listen, clean):
        app.command()(handle_errors(command))
    cron_app = typer.Typer(help="Manage the crontab line that runs `mqi scan` and `mqi poll`.")
    cron_app.command("install")(handle_errors(cron_install))
    cron_app.command("show")(handle_errors(cron_show))
    cron_app.command("remove")(handle_errors(cron_remove))
    app.add_typer(cron_app, name="cron")


def poll(
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Keep following until no case is active (results as each post job ends)."
        ),
    ] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after S seconds.")] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing unless something failed.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Mirror Slurm's job states into the database and bring finished results home."""

    def show(report: Any) -> None:
        if as_json or quiet:
            return
        for case_id in report.delivered:
            out.print(f"delivered {case_id}")
        for case_id in report.resubmitted:
            out.print(f"resubmitted {case_id} (its jobs were lost in Slurm)")

    with session(config) as mqi:
        if wait:
            report = mqi.poll_until_done(timeout=timeout, on_cycle=show)
        else:
            report = mqi.poll()
            show(report)
    if as_json:
        print_json(report.to_json())
    elif not quiet:
        out.print(f"{report.active_cases} active case(s); {report.jobs_tracked} job(s) tracked")
    if report.errors:
        raise typer.Exit(1)


def status(
    case_id: Annotated[str | None, typer.Argument(help="One case (default: all cases).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    fmt: FormatOption = None,
    utc: UtcOption = False,
) -> None:
    """Cases from the database (run `mqi poll` to refresh them)."""
    from mqi.cli import views

    chosen = output_format(fmt, as_json)
    with session(config) as mqi:
        data = mqi.status(case_id)
    if chosen == "json":
        print_json(data)
    elif case_id:
        if chosen == "table":
            for line in views.case_lines(data, utc=utc):
                sys.stdout.write(line + "\n")
        views.emit(views.beams_rows(data, utc=utc), chosen, out)
    elif not data and chosen == "table":
        out.print("no cases yet: `mqi submit CASE_DIR` or put folders in watch_dir for `mqi scan`")
    else:
        views.emit(views.cases_rows(data), chosen, out)


def queue(
    config: ConfigOption = None, as_json: JsonOption = False, fmt: FormatOption = None, utc: UtcOption = False
) -> None:
    """This tool's live jobs in Slurm (squeue), with pending reasons."""
    from mqi.cli import views

    chosen = output_format(fmt, as_json)
    with session(config) as mqi:
        rows = mqi.queue()
    if chosen == "json":
        print_json([row.to_json() for row in rows])
        return
    if not rows and chosen == "table":
        out.print("no mqi jobs in the queue")
        return
    table = views.Rows("mqi jobs in Slurm", ["job", "case", "step", "state", "reason", "node", "started"])
    for row in rows:
        started = views.slurm_moment(row.started, utc=utc)
        table.rows.append(
            [row.job_id, row.case_id or "?", row.step, row.state, row.reason or "", row.node or "", started]
        )
    views.emit(table, chosen, out)


def cancel(case_id: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Cancel every job of a case (scancel); the case becomes cancelled."""
    with session(config) as mqi:
        cancelled = mqi.cancel(case_id)
    if as_json:
        print_json({"case_id": case_id, "status": "cancelled", "cancelled_jobs": cancelled})
    else:
        out.print(f"cancelled {case_id}" + (f" (jobs {', '.join(cancelled)})" if cancelled else ""))


def retry(
    case_id: str,
    beam: Annotated[list[int] | None, typer.Option("--beam", "-b", help="Beam number (repeatable).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resubmit only the failed beams (or the named ones) and a new post job; results merge."""
    with session(config) as mqi:
        ids = mqi.retry(case_id, beam or None)
    if as_json:
        print_json({"case_id": case_id, "status": "submitted", "jobs": ids})
    else:
        out.print(f"retrying {case_id}: simulate {ids['simulate']}, post {ids['post']}")


def top(case_id: str, config: ConfigOption = None) -> None:
    """Move a queued case ahead of your other pending jobs (scontrol top)."""
    with session(config) as mqi:
        jobs = mqi.top(case_id)
    out.print(f"moved {case_id} to the top of your queue ({', '.join(jobs)})")


def logs(
    case_id: str,
    beam: Annotated[int | None, typer.Option("--beam", "-b", help="Beam number (simulation log).")] = None,
    step: Annotated[str | None, typer.Option("--step", "-s", help="prepare, simulate or post.")] = None,
    config: ConfigOption = None,
) -> None:
    """Print a job's Slurm output from the cluster."""
    with session(config) as mqi:
        text = mqi.logs(case_id, beam=beam, step=step)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def scan(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only what was submitted or failed.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit every ready, not yet known case folder under watch_dir (run it from cron)."""
    with session(config) as mqi:
        report = mqi.scan()
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


def run(
    interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between Slurm mirrors while cases are active (poll.interval_seconds).", min=0.1
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Scan, follow and bring results home for ever (for systemd): each case's results as its
    post job ends; SIGTERM ends it cleanly after the current step."""
    should_stop = _stop_on_signals()
    with session(config) as mqi:
        mqi.run_service(interval=interval, should_stop=should_stop)


def listen(config: ConfigOption = None) -> None:
    """Receive cases from the TPS by DICOM (C-STORE) and submit each complete one (for systemd)."""
    should_stop = _stop_on_signals()
    with session(config) as mqi:
        mqi.listen(should_stop=should_stop)


def clean(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go, remove nothing.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    fmt: FormatOption = None,
) -> None:
    """Retention: remove what finished cases left on the cluster and here, archive old results."""
    from mqi.cli import views

    chosen = output_format(fmt, as_json)
    with session(config) as mqi:
        report = mqi.clean(dry_run=dry_run)
    if chosen == "json":
        print_json(report.to_json())
    else:
        table = views.Rows("mqi clean", ["what", "case", "bytes", "path"])
        for item in report.items:
            table.rows.append([item.kind, item.case_id or "", str(item.bytes), item.path])
        views.emit(table, chosen, out)
        if chosen == "table":
            verb = "would free" if dry_run else "freed"
            out.print(f"{len(report.items)} item(s); {verb} {report.bytes_freed / 1e6:.1f} MB", markup=False)
    for error in report.errors:
        log(f"clean: {error}")
    if report.errors:
        raise typer.Exit(1)


def _stop_on_signals() -> Callable[[], bool]:
    """SIGTERM (systemd) and Ctrl-C end a service loop cleanly after what it is doing."""
    import signal

    stop = {"now": False}

    def request_stop(_signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return lambda: stop["now"]


def cron_install(
    every: Annotated[int, typer.Option(help="Minutes between runs.", min=1, max=59)] = 1,
    config: ConfigOption = None,
) -> None:
    """Add (or replace) the mqi line in your crontab."""
    from mqi import cron
    from mqi.config import load_config

    line = cron.install(load_config(config_path(config)), every)
    out.print(f"installed: {line}", markup=False, soft_wrap=True)


def cron_show() -> None:
    """Print the mqi line of your crontab."""
    from mqi import cron

    line = cron.show()
    if line is None:
        out.print("no mqi line in your crontab (`mqi cron install` adds one)")
        raise typer.Exit(1)
    out.print(line, markup=False, soft_wrap=True)


def cron_remove() -> None:
    """Remove the mqi line from your crontab; other lines stay."""
    from mqi import cron

    out.print("removed the mqi line" if cron.remove() else "there was no mqi line")
