"""Commands that bring cases in: init, doctor, check, submit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mqi.cli.common import (
    ConfigOption,
    FormatOption,
    JsonOption,
    config_path,
    err,
    fail,
    handle_errors,
    out,
    output_format,
    print_json,
    session,
)


def register(app: typer.Typer) -> None:
    for command in (init, doctor, check, submit):
        app.command()(handle_errors(command))


def init(
    directory: Annotated[Path, typer.Argument(help="Folder for mqi.yaml.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite an existing mqi.yaml.")] = False,
) -> None:
    """Write a commented example mqi.yaml."""
    from mqi.config import example_config_text

    target = directory / "mqi.yaml"
    if target.exists() and not force:
        raise fail(f"{target} exists; pass --force to overwrite it", 2)
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(example_config_text(), encoding="utf-8")
    out.print(f"wrote {target}: edit cluster, slurm and moqui, then run `mqi doctor`")


def doctor(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    fmt: FormatOption = None,
    job: Annotated[
        bool, typer.Option("--job", help="Also run a one-minute GPU test job and wait for it.")
    ] = False,
) -> None:
    """Check config, connection, host key, workspace, Slurm, partition, engine and remote Python."""
    from mqi.cli import views
    from mqi.doctor import checks_json

    chosen = output_format(fmt, as_json)
    with session(config) as mqi:
        checks = mqi.doctor(job=job)
    if chosen == "json":
        print_json(checks_json(checks))
    else:
        table = views.Rows("mqi doctor", ["check", "result", "detail"])
        for check in checks:
            table.rows.append([check.name, "pass" if check.ok else "FAIL", check.detail])
            table.styles.append("green" if check.ok else "red")
        views.emit(table, chosen, out)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


def check(
    case_dir: Annotated[Path, typer.Argument(help="The case folder to read and check.")],
    plan: Annotated[str | None, typer.Option("--plan", help="SOP Instance UID of the plan to use.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Read and check a case folder; nothing is submitted. Exit 2 when it is invalid."""
    from mqi.config import load_optional_config
    from mqi.intake import IntakeOptions, read_case
    from mqi.intake.report import render_check

    cfg = load_optional_config(config_path(config))
    options = IntakeOptions.from_config(cfg, plan_uid=plan) if cfg else IntakeOptions(plan_uid=plan)
    result = read_case(case_dir, options)
    if as_json:
        print_json(result.to_json())
    else:
        out.print(render_check(result))
    if not result.valid:
        raise typer.Exit(2)


class _RichUpload:
    """A progress bar (bytes, rate) for uploads, shown only on a terminal."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

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
    from mqi.submit import CaseRejected

    with session(config) as mqi:
        if dry_run:
            _dry_run(mqi, case_dir, out_dir, priority, plan, as_json)
            return
        progress = _RichUpload() if (sys.stderr.isatty() and not as_json) else None
        try:
            outcome = mqi.submit(case_dir, priority=priority, force=force, plan=plan, progress=progress)
        except CaseRejected as rejected:
            if as_json:
                print_json({**rejected.result.to_json(), "case_id": rejected.case_id, "status": "rejected"})
            raise
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
    mqi: Any, case_dir: Path, out_dir: Path | None, priority: str | None, plan: str | None, as_json: bool
) -> None:
    from mqi.submit import CaseRejected

    try:
        result, rendered = mqi.dry_run(case_dir, out_dir, priority=priority, plan=plan)
    except CaseRejected as rejected:
        if as_json:
            print_json({**rejected.result.to_json(), "case_id": rejected.case_id, "status": "rejected"})
        raise
    case = result.case
    if as_json:
        print_json(
            {
                "case_id": case.case_id,
                "case_uid": case.case_uid,
                "status": "dry-run",
                "bundle": str(rendered.path),
                "sbatch": rendered.sbatch_lines,
                "warnings": rendered.warnings,
            }
        )
        return
    for warning in rendered.warnings:
        err.print(f"warning: {warning}", markup=False)
    out.print(f"bundle for {case.case_id} written to {rendered.path} (nothing submitted)", markup=False)
    for line in rendered.sbatch_lines:
        out.print(line, markup=False, soft_wrap=True)
