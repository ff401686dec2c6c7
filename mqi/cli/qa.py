"""The QA answer on the workstation: `mqi compare` (any two RT Dose files) and `mqi report`
(a delivered case, recomputed with any criteria)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mqi.cli.common import (
    ConfigOption,
    FormatOption,
    JsonOption,
    handle_errors,
    out,
    output_format,
    print_json,
)

CriteriaOption = Annotated[
    list[str] | None,
    typer.Option(
        "--criteria", help="A gamma criterion, e.g. 3%/3mm/10% or 2%/2mm/10%>=90 (repeatable; default: qa:)."
    ),
]


def register(app: typer.Typer) -> None:
    app.command()(handle_errors(compare))
    app.command()(handle_errors(report))


def compare(
    reference: Annotated[Path, typer.Argument(help="The reference RT Dose (e.g. the TPS dose).")],
    evaluated: Annotated[Path, typer.Argument(help="The RT Dose compared with it (e.g. mqi's).")],
    criteria: CriteriaOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    fmt: FormatOption = None,
) -> None:
    """Compare two RT Dose files: gamma pass rates, dose difference, verdict. Exit 1 on fail."""
    from mqi import api
    from mqi.cli import views
    from mqi.cli.common import config_path
    from mqi.config import Config, load_optional_config
    from mqi.errors import UsageError
    from mqi.qa.model import comparison_document

    chosen = output_format(fmt, as_json)
    for path in (reference, evaluated):
        if not path.is_file():
            raise UsageError(f"{path} is not a file: give two RT Dose files")
    settings = load_optional_config(config_path(config)) or Config()
    with api.Session(settings) as mqi:
        comparison = mqi.compare(reference, evaluated, criteria=criteria)
    if chosen == "json":
        print_json(comparison_document(comparison))
    else:
        table = views.Rows(
            f"{reference.name} (reference) vs {evaluated.name}",
            ["criterion", "pass rate", "required", "result", "mean gamma", "uncovered"],
        )
        for gamma in comparison.gamma:
            table.rows.append(
                [
                    gamma.criterion,
                    f"{gamma.pass_rate:.2f}%",
                    f"{gamma.required_pass_rate:g}%",
                    "pass" if gamma.passed else "FAIL",
                    "" if gamma.mean is None else f"{gamma.mean:.3f}",
                    str(gamma.uncovered_voxels),
                ]
            )
            table.styles.append("green" if gamma.passed else "red")
        views.emit(table, chosen, out)
        if chosen == "table":
            line = f"verdict: {comparison.verdict}"
            out.print(
                line + (f" ({'; '.join(comparison.reasons)})" if comparison.reasons else ""), markup=False
            )
    if comparison.verdict == "fail":
        raise typer.Exit(1)


def report(
    case_id: str,
    criteria: CriteriaOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute a delivered case's QA here, with the case folder's TPS dose; writes a new
    qa.<time>.json and report.<time>.pdf beside the post job's."""
    from mqi.cli.common import session

    with session(config) as mqi:
        result = mqi.report(case_id, criteria=criteria)
    if as_json:
        print_json(result)
        return
    rate = (
        f", {result['first_criterion']} {result['first_pass_rate']:.1f}%"
        if result["first_pass_rate"] is not None
        else ""
    )
    out.print(f"{case_id}: {result['verdict']}{rate}", markup=False)
    for reason in result["reasons"]:
        out.print(f"  {reason}", markup=False)
    out.print(f"report: {result['report_pdf'] or '(nothing compared: no PDF)'}", markup=False)
