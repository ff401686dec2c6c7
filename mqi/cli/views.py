"""What the CLI shows of cases: rich tables built from the status documents of ``mqi.api``."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from mqi.clock import now_utc, parse_utc


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


STYLE = {
    "completed": "green",
    "failed": "red",
    "rejected": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "postprocessing": "cyan",
}


def span(start: str | None, end: str | None) -> str:
    """Minutes and seconds between two stored UTC times."""
    if not start or not end:
        return ""
    try:
        seconds = max(0, int((parse_utc(end) - parse_utc(start)).total_seconds()))
    except ValueError:
        return ""
    return f"{seconds // 60}m{seconds % 60:02d}s"


def case_detail(data: dict[str, Any]) -> Group:
    """One case: status, error or problems, results folder, beams table, jobs."""
    style = STYLE.get(data["status"], "")
    shown = f"[{style}]{data['status']}[/]" if style else data["status"]
    parts: list[Any] = [Text.from_markup(f"[bold]{data['case_id']}[/]  {shown}")]
    if data["error"]:
        parts.append(Text(f"error: {data['error']}"))
    parts += [Text(f"  {problem['code']}: {problem['message']}") for problem in data["errors"]]
    if data["results_dir"]:
        parts.append(Text(f"results: {data['results_dir']}"))
    if data["beams"]:
        table = Table()
        for column in ("beam", "name", "status", "slurm", "job", "node", "exit", "reason", "dose file"):
            table.add_column(column, overflow="fold")
        for beam in data["beams"]:
            table.add_row(
                str(beam["number"]),
                beam["name"],
                beam["status"],
                beam["slurm_state"] or "",
                beam["job_id"] or "",
                beam["node"] or "",
                "" if beam["exit_code"] is None else str(beam["exit_code"]),
                beam["reason"] or "",
                beam["dose_file"].rsplit("/", 1)[-1] if beam["dose_file"] else "",
            )
        parts.append(table)
    if data["jobs"]:
        jobs = ", ".join(f"{j['step']} {j['job_id']} ({j['state']})" for j in data["jobs"])
        parts.append(Text(f"jobs: {jobs}"))
    return Group(*parts)


def cases_table(cases: list[dict[str, Any]]) -> Table:
    """One row per case: status, beams done, age, time waiting and running, error."""
    table = Table(title="mqi cases")
    for column in ("case", "status", "beams", "age", "waited", "ran", "error"):
        table.add_column(column, overflow="fold")
    for case in cases:
        beams = case["beams"]
        done = sum(beam["status"] == "completed" for beam in beams)
        started = [b["started_at"] for b in beams if b["started_at"]]
        ended = [b["ended_at"] for b in beams if b["ended_at"]]
        waited = span(case["submitted_at"], min(started) if started else None)
        ran = span(min(started) if started else None, max(ended) if ended else None)
        style = STYLE.get(case["status"], "")
        table.add_row(
            case["case_id"],
            f"[{style}]{case['status']}[/]" if style else case["status"],
            f"{done}/{len(beams)}" if beams else "",
            age(case["created_at"]),
            waited,
            ran,
            (case["error"] or "")[:120],
        )
    return table
