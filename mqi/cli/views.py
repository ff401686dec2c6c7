"""What the CLI shows: rows built from the documents of ``mqi.api``, drawn as a rich table on a
terminal, as plain aligned columns when piped or logged, or as TSV, CSV or JSON on request."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mqi.clock import now_utc, parse_utc

FORMATS = ("table", "tsv", "csv", "json")
STYLE = {
    "completed": "green",
    "failed": "red",
    "rejected": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "postprocessing": "cyan",
}


@dataclass
class Rows:
    """A table: column names and rows of plain text (the first column is the key)."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)  # one per row, for a terminal only


def age(iso: str | None) -> str:
    """How long ago, in the largest sensible unit."""
    if not iso:
        return ""
    seconds = int((now_utc() - parse_utc(iso)).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def span(start: str | None, end: str | None) -> str:
    """Minutes and seconds between two stored UTC times."""
    if not start or not end:
        return ""
    try:
        seconds = max(0, int((parse_utc(end) - parse_utc(start)).total_seconds()))
    except ValueError:
        return ""
    return f"{seconds // 60}m{seconds % 60:02d}s"


def moment(iso: str | None, *, utc: bool) -> str:
    """A stored UTC time as people read it: local time (``--utc``: UTC, with its Z)."""
    if not iso:
        return ""
    try:
        when = parse_utc(iso)
    except ValueError:
        return iso
    if utc:
        return when.strftime("%Y-%m-%d %H:%M:%SZ")
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def slurm_moment(text: str | None, *, utc: bool) -> str:
    """A time Slurm printed under TZ=UTC (``2026-01-01T10:00:00``), shown as ``moment`` does."""
    if not text or not text[:4].isdigit():
        return ""
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return text
    return moment(text + "Z", utc=utc)


def cases_rows(cases: list[dict[str, Any]]) -> Rows:
    """One row per case: status, beams done, age, time waiting and running, error."""
    table = Rows("mqi cases", ["case", "status", "qa", "beams", "age", "waited", "ran", "error"])
    for case in cases:
        beams = case["beams"]
        done = sum(beam["status"] == "completed" for beam in beams)
        started = [b["started_at"] for b in beams if b["started_at"]]
        ended = [b["ended_at"] for b in beams if b["ended_at"]]
        table.rows.append(
            [
                case["case_id"],
                case["status"],
                _verdict(case.get("qa")),
                f"{done}/{len(beams)}" if beams else "",
                age(case["created_at"]),
                span(case["submitted_at"], min(started) if started else None),
                span(min(started) if started else None, max(ended) if ended else None),
                (case["error"] or "")[:120],
            ]
        )
        table.styles.append(STYLE.get(case["status"], ""))
    return table


def _verdict(qa: dict[str, Any] | None) -> str:
    """``pass 98.7%`` (the first criterion's pass rate), or the verdict alone."""
    if not qa:
        return ""
    rate = qa.get("first", "").rsplit(" ", 1)[-1] if qa.get("first") else ""
    return f"{qa['verdict']} {rate}".strip() if rate.endswith("%") else str(qa["verdict"])


def beams_rows(case: dict[str, Any], *, utc: bool) -> Rows:
    table = Rows(
        f"beams of {case['case_id']}",
        ["beam", "name", "status", "slurm", "job", "node", "exit", "started", "reason", "dose file"],
    )
    for beam in case["beams"]:
        table.rows.append(
            [
                str(beam["number"]),
                beam["name"],
                beam["status"],
                beam["slurm_state"] or "",
                beam["job_id"] or "",
                beam["node"] or "",
                "" if beam["exit_code"] is None else str(beam["exit_code"]),
                moment(beam.get("started_at"), utc=utc),
                beam["reason"] or "",
                beam["dose_file"].rsplit("/", 1)[-1] if beam["dose_file"] else "",
            ]
        )
        table.styles.append(STYLE.get(beam["status"], ""))
    return table


def case_lines(case: dict[str, Any], *, utc: bool) -> list[str]:
    """The lines above one case's beams: status, error or problems, results, sends, jobs."""
    lines = [f"{case['case_id']}  {case['status']}  (created {moment(case['created_at'], utc=utc)})"]
    if case["error"]:
        lines.append(f"error: {case['error']}")
    lines += [f"  {problem['code']}: {problem['message']}" for problem in case["errors"]]
    if case["results_dir"]:
        lines.append(f"results: {case['results_dir']}")
    if case.get("qa"):
        lines.append(f"qa: {case['qa']['verdict']} ({case['qa']['summary']})")
    for send in case.get("sends", []):
        lines.append(f"send to {send['destination']}: {send['state']} ({send['reason'] or ''})")
    if case["jobs"]:
        lines.append("jobs: " + ", ".join(f"{j['step']} {j['job_id']} ({j['state']})" for j in case["jobs"]))
    return lines


def emit(table: Rows, fmt: str, out: Any) -> None:
    """Write a table in ``fmt`` (table, tsv or csv) to standard output."""
    if fmt == "tsv":
        clean = [[_one_cell(cell) for cell in row] for row in [table.columns, *table.rows]]
        sys.stdout.write("".join("\t".join(row) + "\n" for row in clean))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows([table.columns, *table.rows])
    elif sys.stdout.isatty():
        from rich.table import Table

        drawn = Table(title=table.title)
        for column in table.columns:
            drawn.add_column(column, overflow="fold")
        for row, style in zip(table.rows, table.styles or [""] * len(table.rows), strict=True):
            drawn.add_row(*row, style=style or None)
        out.print(drawn)
    else:
        sys.stdout.write(plain(table))


def plain(table: Rows) -> str:
    """Aligned columns, no box and no wrapping: for logs, pipes and grep."""
    rows = [[_one_cell(cell) for cell in row] for row in [table.columns, *table.rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.columns))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in rows
    )


def _one_cell(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
