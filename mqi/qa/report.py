"""report.pdf: a first page a physicist signs, then a page per compared dose.

Page 1: plan label, PatientID, plan UID, date, engine and parameters, criteria, the table of
pass rates per beam and plan with the verdict in colour, the plan's DVH metrics, the
reasons and a signature line. Then, for each compared dose: MC / TPS / difference / gamma
slices through the isocentre in three planes, profiles along x, y, z and the DVH.
The patient's name is never read, so it cannot be printed.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from mqi.qa.model import CaseQA, Comparison

A4 = (8.27, 11.69)
VERDICT_COLOURS = {
    "pass": "#2e7d32",
    "review": "#f9a825",
    "fail": "#c62828",
    "not-compared": "#757575",
    "error": "#757575",
}
ENGINE_PARAMETERS_SHOWN = 14
TEXT_WIDTH = 78  # characters of a value line on page 1


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _text_block(fig: Figure, top: float, lines: list[tuple[str, str]]) -> float:
    y = top
    for key, value in lines:
        fig.text(0.07, y, key, fontsize=9, weight="bold", va="top")
        for part in textwrap.wrap(value, TEXT_WIDTH) or ["-"]:
            fig.text(0.30, y, part, fontsize=9, va="top")
            y -= 0.02
        y -= 0.002
    return y


def _engine_lines(engine: dict[str, Any]) -> list[tuple[str, str]]:
    params = engine.get("parameters") or {}
    shown = ", ".join(f"{k} {v}" for k, v in list(params.items())[:ENGINE_PARAMETERS_SHOWN])
    if len(params) > ENGINE_PARAMETERS_SHOWN:
        shown += ", ..."
    head = " ".join(str(engine[k]) for k in ("family", "command") if engine.get(k))
    return [("Engine", head or "-"), ("Engine parameters", shown or "-")]


def _table(ax: Any, header: list[str], rows: list[list[str]], colours: list[list[str]], font: float) -> None:
    ax.axis("off")
    if not rows:
        ax.text(0, 0.5, "(none)", fontsize=font)
        return
    table = ax.table(
        cellText=rows, colLabels=header, cellColours=colours, loc="upper center", cellLoc="center"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(font)
    table.scale(1.0, 1.35)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            if any("\n" in text for text in header):
                cell.set_height(cell.get_height() * 1.8)
            cell.set_facecolor("#e0e0e0")
            cell.set_text_props(weight="bold")


def _summary_rows(qa: CaseQA) -> tuple[list[str], list[list[str]], list[list[str]]]:
    labels = [c.split(" >=")[0] for c in qa.criteria]
    header = [
        "dose",
        "verdict",
        *[f"gamma\n{label}" for label in labels],
        "mean\ngamma",
        "mean diff\n(% of max)",
    ]
    rows, colours = [], []
    for comparison in qa.comparisons:
        rates = {g.criterion: g for g in comparison.gamma}
        cells = [comparison.label, comparison.verdict]
        cell_colours = ["white", VERDICT_COLOURS[comparison.verdict]]
        for label in labels:
            figures = rates.get(label)
            cells.append(_fmt(figures.pass_rate, 1, "%") if figures else "-")
            cell_colours.append("white" if figures is None or figures.passed else "#ffcdd2")
        first = comparison.gamma[0] if comparison.gamma else None
        diff = comparison.dose_difference
        cells += [_fmt(first.mean if first else None), _fmt(diff.mean_percent if diff else None, 2, "%")]
        cell_colours += ["white", "white"]
        rows.append(cells)
        colours.append(cell_colours)
    return header, rows, colours


def _dvh_rows(comparison: Comparison | None) -> tuple[list[str], list[list[str]], list[list[str]]]:
    header = ["structure", "cm³", "metric", "TPS", "MC", "MC-TPS", ""]
    rows, colours = [], []
    if comparison is None:
        return header, rows, colours
    for s in comparison.structures:
        if not s.judged or s.reference is None or s.evaluated is None:
            continue
        metrics = ("d95", "dmean", "d2") if s.target else ("dmean", "dmax", "d1cc")
        for index, name in enumerate(metrics):
            ref, ev = getattr(s.reference, name), getattr(s.evaluated, name)
            delta = s.difference.get(name)
            flagged = any(item.split(" ")[1].lower() == name for item in s.out_of_tolerance)
            rel = "" if not ref or delta is None else f"{100.0 * delta / ref:+.1f}%"
            rows.append(
                [
                    s.name if index == 0 else "",
                    _fmt(s.reference.volume_cc, 1) if index == 0 else "",
                    name.upper().replace("DMEAN", "Dmean").replace("DMAX", "Dmax").replace("D1CC", "D1cc"),
                    _fmt(ref, 3),
                    _fmt(ev, 3),
                    _fmt(delta, 3),
                    rel,
                ]
            )
            colours.append(["white"] * 6 + ["#ffcdd2" if flagged else "white"])
        if s.target and s.reference.v95 is not None and s.evaluated.v95 is not None:
            rows.append(
                [
                    "",
                    "",
                    "V95% Rx",
                    _fmt(s.reference.v95, 1, "%"),
                    _fmt(s.evaluated.v95, 1, "%"),
                    _fmt(s.difference.get("v95"), 1),
                    "",
                ]
            )
            colours.append(["white"] * 7)
    return header, rows, colours


def first_page(qa: CaseQA) -> Figure:
    fig = plt.figure(figsize=A4)
    fig.text(0.07, 0.955, "Patient-specific QA: Monte Carlo vs TPS dose", fontsize=15, weight="bold")
    colour = VERDICT_COLOURS[qa.verdict]
    fig.text(
        0.93,
        0.955,
        qa.verdict.upper(),
        fontsize=15,
        weight="bold",
        color="white",
        ha="right",
        bbox={"facecolor": colour, "edgecolor": colour, "boxstyle": "round,pad=0.3"},
    )
    reference = (
        "TPS dose (gamma reference)"
        if (qa.comparisons and qa.comparisons[0].reference_role == "tps")
        else ("MC dose (gamma reference)")
    )
    lines = [
        ("Plan label", qa.plan_label or "-"),
        ("Patient ID", qa.patient_id or "-"),
        ("Plan UID", qa.plan_uid or "-"),
        ("Case", qa.case_uid or "-"),
        ("Date (UTC)", qa.created.replace("T", " ").rstrip("Z")),
        *_engine_lines(qa.engine),
        (
            "Dose types",
            f"MC {qa.mc_dose_type or '-'}, TPS {qa.tps_dose_type or '-'}; RBE factor on MC "
            f"{_fmt(qa.comparisons[0].evaluated_factor if qa.comparisons else 1.0, 2)}",
        ),
        ("Reference", reference),
        ("Criteria", "; ".join(qa.criteria)),
        ("", "global unless marked local; pass is gamma <= 1; cutoff % of the reference max"),
        ("Prescription", f"{_fmt(qa.prescription_gy, 3)} Gy ({qa.prescription_source or 'none'})"),
    ]
    y = _text_block(fig, 0.91, lines)
    header, rows, colours = _summary_rows(qa)
    height = 0.025 * (len(rows) + 2)
    _table(fig.add_axes((0.07, y - height, 0.86, height)), header, rows, colours, 8.5)
    y -= height + 0.03
    reasons = qa.reasons or ["all criteria met"]
    fig.text(0.07, y, "Findings", fontsize=10, weight="bold", va="top")
    for reason in reasons[:6]:
        y -= 0.02
        fig.text(0.09, y, f"- {reason}", fontsize=8, va="top")
    if len(reasons) > 6:
        y -= 0.02
        fig.text(0.09, y, f"... and {len(reasons) - 6} more (qa.json)", fontsize=8, va="top")
    y -= 0.04
    plan = next((c for c in qa.comparisons if c.label in ("plan", "files") and c.structures), None)
    header, rows, colours = _dvh_rows(plan)
    fig.text(0.07, y, "DVH metrics of the plan (Gy)", fontsize=10, weight="bold", va="top")
    fitting = max(int((y - 0.14) / 0.021) - 1, 0)
    height = 0.021 * (min(len(rows), fitting) + 1)
    _table(
        fig.add_axes((0.07, y - 0.015 - height, 0.86, height)), header, rows[:fitting], colours[:fitting], 7.5
    )
    fig.text(
        0.07,
        0.075,
        "Reviewed by: ______________________    Date: ____________    Signature: ______________________",
        fontsize=10,
    )
    fig.text(
        0.07,
        0.04,
        "mqi QA report. The Monte Carlo dose is an independent check of the TPS dose; "
        "MC noise raises gamma pass rates slightly.",
        fontsize=7,
        color="#555555",
    )
    return fig


def _planes(volume: np.ndarray, ijk: tuple[int, int, int]) -> list[np.ndarray]:
    i, j, k = ijk
    return [volume[k, :, :], volume[:, j, :], volume[:, :, i]]


def detail_page(qa: CaseQA, comparison: Comparison) -> Figure | None:
    arrays = comparison._arrays
    if arrays is None:
        return None
    ref = arrays.reference
    fig = plt.figure(figsize=A4)
    colour = VERDICT_COLOURS[comparison.verdict]
    rates = ", ".join(f"{g.criterion}: {g.pass_rate:.1f}%" for g in comparison.gamma)
    fig.suptitle(
        f"{comparison.label}: {comparison.verdict.upper()}   {rates}",
        fontsize=11,
        weight="bold",
        color=colour,
        y=0.985,
    )
    iso = arrays.isocentre
    ijk = (
        int(np.argmin(abs(ref.x - iso[0]))),
        int(np.argmin(abs(ref.y - iso[1]))),
        int(np.argmin(abs(ref.z - iso[2]))),
    )
    maximum = float(ref.values.max(initial=0.0)) or 1.0
    gamma = arrays.gamma_maps[0] if arrays.gamma_maps else np.full(ref.values.shape, np.nan)
    gamma = np.where(np.isinf(gamma), 2.0, gamma)
    rows = [
        (f"{arrays.evaluated_name} (Gy)", arrays.evaluated_on_reference, "turbo", 0.0, maximum),
        (f"{arrays.reference_name} (Gy)", ref.values, "turbo", 0.0, maximum),
        (
            "difference (% of max)",
            100.0 * (arrays.evaluated_on_reference - ref.values) / maximum,
            "RdBu_r",
            -5.0,
            5.0,
        ),
        (f"gamma {comparison.gamma[0].criterion if comparison.gamma else ''}", gamma, "RdYlGn_r", 0.0, 2.0),
    ]
    extents = [
        ((ref.x[0], ref.x[-1], ref.y[-1], ref.y[0]), "x", "y", f"axial z={ref.z[ijk[2]]:.1f}", "upper"),
        ((ref.x[0], ref.x[-1], ref.z[0], ref.z[-1]), "x", "z", f"coronal y={ref.y[ijk[1]]:.1f}", "lower"),
        ((ref.y[0], ref.y[-1], ref.z[0], ref.z[-1]), "y", "z", f"sagittal x={ref.x[ijk[0]]:.1f}", "lower"),
    ]
    grid = fig.add_gridspec(6, 3, left=0.08, right=0.9, top=0.95, bottom=0.05, hspace=0.5, wspace=0.35)
    for r, (title, volume, cmap, vmin, vmax) in enumerate(rows):
        image = None
        for c, plane in enumerate(_planes(volume, ijk)):
            ax = fig.add_subplot(grid[r, c])
            extent, xl, yl, where, origin = extents[c]
            image = ax.imshow(
                plane,
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                extent=extent,
                origin=origin,
                aspect="equal",
                interpolation="nearest",
            )
            ax.set_title(f"{title} - {where}" if c == 0 else where, fontsize=7)
            ax.tick_params(labelsize=5)
            ax.set_xlabel(f"{xl} (mm)", fontsize=5, labelpad=1)
            ax.set_ylabel(f"{yl} (mm)", fontsize=5, labelpad=1)
        cax = fig.add_axes((0.915, ax.get_position().y0, 0.012, ax.get_position().height))
        fig.colorbar(image, cax=cax).ax.tick_params(labelsize=5)
    for c, profile in enumerate(comparison.profiles):
        ax = fig.add_subplot(grid[4, c])
        position = np.asarray(profile.position_mm)
        to_float = lambda values: np.array([np.nan if v is None else v for v in values], dtype=float)  # noqa: E731
        ax.plot(position, to_float(profile.reference_gy), color="black", lw=1, label=arrays.reference_name)
        ax.plot(
            position,
            to_float(profile.evaluated_gy),
            color="#d81b60",
            lw=1,
            ls="--",
            label=arrays.evaluated_name,
        )
        ax.set_title(f"profile along {profile.axis}", fontsize=7)
        ax.tick_params(labelsize=5)
        ax.set_xlabel(f"{profile.axis} (mm)", fontsize=5, labelpad=1)
        ax.set_ylabel("Gy", fontsize=5, labelpad=1)
        if c == 0:
            ax.legend(fontsize=5)
    ax = fig.add_subplot(grid[5, :])
    _dvh_plot(ax, comparison, arrays.reference_name, arrays.evaluated_name)
    return fig


def _dvh_plot(ax: Any, comparison: Comparison, ref_name: str, ev_name: str) -> None:
    colours = plt.get_cmap("tab10")
    drawn = 0
    for s in comparison.structures:
        if s.reference is None or s.evaluated is None or not s.judged:
            continue
        colour = colours(drawn % 10)
        ax.plot(
            s.reference.curve_dose_gy,
            s.reference.curve_volume_percent,
            color=colour,
            lw=1,
            label=f"{s.name} ({ref_name} solid, {ev_name} dashed)",
        )
        ax.plot(s.evaluated.curve_dose_gy, s.evaluated.curve_volume_percent, color=colour, lw=1, ls="--")
        drawn += 1
    ax.set_title("cumulative DVH", fontsize=7)
    ax.set_xlabel("dose (Gy)", fontsize=6)
    ax.set_ylabel("volume (%)", fontsize=6)
    ax.tick_params(labelsize=5)
    if drawn:
        ax.legend(fontsize=5, loc="lower left")
    else:
        ax.text(0.5, 0.5, "no structures", ha="center", transform=ax.transAxes, fontsize=7)


def write_report(qa: CaseQA, path: Path) -> Path:
    """Write the PDF (via a temporary file and a rename) and return its path."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with PdfPages(partial, metadata={"Title": f"mqi QA {qa.plan_label}", "Author": "mqi"}) as pdf:
        figure = first_page(qa)
        pdf.savefig(figure)
        plt.close(figure)
        for comparison in qa.comparisons:
            figure = detail_page(qa, comparison)
            if figure is not None:
                pdf.savefig(figure)
                plt.close(figure)
    os.replace(partial, path)
    return path
