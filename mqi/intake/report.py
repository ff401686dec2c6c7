"""`mqi check` for people: a rich summary of a valid case, or every problem of an invalid one."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mqi.intake.model import Beam, CTGrid, Problem, TPSDose
from mqi.intake.reader import IntakeResult
from mqi.textsafe import escape_control


def render_check(result: IntakeResult) -> RenderableType:
    """Headline, then the errors (invalid) or the case summary (valid), then the warnings."""
    parts: list[RenderableType] = [_headline(result)]
    if result.valid:
        parts += _summary(result)
    else:
        parts.append(_problems("Errors", result.errors, "red"))
    if result.warnings:
        parts.append(_problems("Warnings", result.warnings, "yellow"))
    return Group(*parts)


def _headline(result: IntakeResult) -> Text:
    name = escape_control(result.case_id or str(result.source_dir))
    if result.valid:
        return Text.assemble(("VALID ", "bold green"), (name, "bold"))
    count = len(result.errors)
    return Text.assemble(
        ("INVALID ", "bold red"), (name, "bold"), f": {count} problem{'s' if count != 1 else ''}"
    )


def _problems(title: str, problems: list[Problem], style: str) -> Table:
    table = Table(title=title, title_justify="left", title_style=f"bold {style}", expand=False)
    table.add_column("code", style=style, no_wrap=True)
    table.add_column("problem", overflow="fold")
    for problem in problems:
        table.add_row(Text(problem.code), Text(problem.message))
    return table


def _summary(result: IntakeResult) -> list[RenderableType]:
    parts: list[RenderableType] = []
    if result.plan is not None:
        parts.append(
            Text.assemble(
                ("Plan ", "bold"),
                f"{escape_control(result.plan.label) or '(no label)'}  {result.plan.fractions} fraction(s)  ",
                (result.plan.sop_instance_uid, "dim"),
            )
        )
    if result.beams:
        parts.append(_beams(result.beams))
    if result.ct is not None:
        parts.append(_ct(result.ct))
    names = [escape_control(s.name) for s in result.structure_set.structures] if result.structure_set else []
    parts.append(Text.assemble(("Structures ", "bold"), ", ".join(names) if names else "none"))
    if result.tps_doses:
        parts.append(_doses(result.tps_doses, result))
    if result.log_dir is not None:
        parts.append(Text.assemble(("Delivery logs ", "bold"), _relative(result, result.log_dir)))
    return parts


def _beams(beams: list[Beam]) -> Table:
    table = Table(title="Beams", title_justify="left", title_style="bold")
    for column in ("number", "name", "machine", "gantry", "couch", "layers", "spots", "meterset"):
        table.add_column(column, justify="left" if column in ("name", "machine") else "right")
    for beam in beams:
        table.add_row(
            str(beam.number),
            Text(escape_control(beam.name)),
            Text(escape_control(beam.machine)),
            f"{beam.gantry_angle:g}",
            f"{beam.couch_angle:g}",
            str(len(beam.layers)),
            f"{beam.spots:,}",
            f"{beam.meterset:,.2f}",
        )
    return table


def _ct(ct: CTGrid) -> Text:
    dx, dy, dz = ct.spacing
    pixels = "signed" if ct.pixel_representation else "unsigned"
    return Text.assemble(
        ("CT ", "bold"),
        f"{ct.columns} x {ct.rows} x {ct.slices} voxels at {dx:g} x {dy:g} x {dz:g} mm, "
        f"{ct.bits_allocated}-bit {pixels}",
    )


def _doses(doses: list[TPSDose], result: IntakeResult) -> Table:
    table = Table(title="TPS doses", title_justify="left", title_style="bold")
    for column in ("file", "summation", "type", "beam"):
        table.add_column(column)
    for dose in doses:
        beam = str(dose.beam_number) if dose.beam_number is not None else ""
        table.add_row(Text(_relative(result, dose.path)), dose.summation_type, dose.dose_type, beam)
    return table


def _relative(result: IntakeResult, path: object) -> str:
    text = str(path)
    root = str(result.source_dir).rstrip("/") + "/"
    return escape_control(text[len(root) :] if text.startswith(root) else text)
