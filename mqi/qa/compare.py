"""MC vs TPS comparison: gamma, dose difference, profiles, DVH and the verdict.

Entry points: `compare_grids` (one dose pair), `compare_files` (two RT Dose files, for
``mqi compare``) and `run_case_qa` (a case's MC doses against its TPS doses, for the post
job and ``mqi report``). All return pydantic models (`Comparison`, `CaseQA`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from mqi.config import GammaCriterionConfig, QAConfig
from mqi.qa.dosetype import mc_to_tps_factor
from mqi.qa.dvh import NOT_JUDGED_TYPES, Structure, StructureSetError, read_structures, structure_dvh
from mqi.qa.gamma import GammaCriterion, GammaResult, gamma_index
from mqi.qa.grids import DoseFileError, DoseGrid, overlap_fraction, read_dose, sample, sum_doses
from mqi.qa.model import (
    CaseQA,
    Comparison,
    DoseDifference,
    DVHFigures,
    GammaFigures,
    Profile,
    StructureComparison,
    worst,
)

DVH_METRICS = ("volume_cc", "dmean", "dmax", "dmin", "d98", "d95", "d50", "d2", "d1cc", "v95")


@dataclass
class ComparisonArrays:
    """What the report draws: both doses on the reference grid and the gamma maps."""

    reference: DoseGrid
    evaluated_on_reference: np.ndarray
    gamma_maps: list[np.ndarray]
    isocentre: tuple[float, float, float]
    reference_name: str = "TPS"
    evaluated_name: str = "MC"
    structures: list[Structure] = field(default_factory=list)


def criterion_of(config: GammaCriterionConfig) -> GammaCriterion:
    return GammaCriterion(config.dose, config.distance, config.cutoff, config.local)


def criteria_labels(config: QAConfig) -> list[str]:
    return [f"{criterion_of(c).label} >= {c.pass_rate:g}%" for c in config.criteria]


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def gamma_figures(result: GammaResult, required: float, seconds: float) -> GammaFigures:
    c = result.criterion
    rate = result.pass_rate
    return GammaFigures(
        criterion=c.label,
        dose_percent=c.dose_percent,
        distance_mm=c.distance_mm,
        cutoff_percent=c.cutoff_percent,
        local=c.local,
        required_pass_rate=required,
        pass_rate=round(rate, 3) if math.isfinite(rate) else 0.0,
        passed=math.isfinite(rate) and rate >= required,
        mean=_round(result.mean),
        p95=_round(result.percentile(95)),
        maximum=_round(result.maximum),
        evaluated_voxels=result.evaluated_voxels,
        passed_voxels=result.passed_voxels,
        uncovered_voxels=result.uncovered_voxels,
        coverage_percent=_round(result.coverage, 3),
        normalisation_gy=round(result.normalisation_gy, 6),
        seconds=round(seconds, 3),
    )


def dose_difference(reference: DoseGrid, evaluated: np.ndarray, high_dose_percent: float) -> DoseDifference:
    """Statistics of evaluated - reference where the reference is above ``high_dose_percent``."""
    ref_max = float(reference.values.max(initial=0.0))
    threshold = high_dose_percent / 100.0 * ref_max
    region = (reference.values >= threshold) & np.isfinite(evaluated)
    diff = evaluated[region] - reference.values[region]
    figures: dict[str, Any] = {
        "reference_max_gy": round(ref_max, 6),
        "evaluated_max_gy": round(float(np.nanmax(evaluated, initial=0.0)), 6),
        "high_dose_threshold_gy": round(threshold, 6),
        "voxels": int(diff.size),
    }
    if diff.size and ref_max > 0:
        percent = 100.0 * diff / ref_max
        figures |= {
            "mean_gy": _round(float(diff.mean()), 6),
            "mean_percent": _round(float(percent.mean()), 3),
            "std_percent": _round(float(percent.std()), 3),
            "p5_percent": _round(float(np.percentile(percent, 5)), 3),
            "p95_percent": _round(float(np.percentile(percent, 95)), 3),
            "max_abs_percent": _round(float(np.abs(percent).max()), 3),
        }
    return DoseDifference(**figures)


def _nearest(axis: np.ndarray, value: float) -> int:
    return int(np.argmin(np.abs(axis - value)))


def profiles(reference: DoseGrid, evaluated: DoseGrid, through: tuple[float, float, float]) -> list[Profile]:
    """Profiles of both doses along x, y and z through ``through`` (on the reference axes)."""
    x, y, z = through
    result = []
    for axis, coords in (("x", reference.x), ("y", reference.y), ("z", reference.z)):
        lattice = {
            "x": (coords, np.array([y]), np.array([z])),
            "y": (np.array([x]), coords, np.array([z])),
            "z": (np.array([x]), np.array([y]), coords),
        }[axis]
        ref = sample(reference, *lattice).ravel()
        ev = sample(evaluated, *lattice).ravel()
        result.append(
            Profile(
                axis=axis,  # type: ignore[arg-type]
                through_mm=(round(x, 3), round(y, 3), round(z, 3)),
                position_mm=[round(float(v), 3) for v in coords],
                reference_gy=[_round(float(v), 5) for v in ref],
                evaluated_gy=[_round(float(v), 5) for v in ev],
            )
        )
    return result


def _figures(metrics: Any) -> DVHFigures | None:
    if metrics is None:
        return None
    return DVHFigures(**{name: getattr(metrics, name) for name in DVHFigures.model_fields})


def _difference(ref: DVHFigures | None, ev: DVHFigures | None) -> dict[str, float | None]:
    if ref is None or ev is None:
        return {}
    out: dict[str, float | None] = {}
    for name in DVH_METRICS[1:]:
        a, b = getattr(ref, name), getattr(ev, name)
        out[name] = None if a is None or b is None else round(b - a, 5)
    return out


def _out_of_tolerance(
    structure: Structure, ref: DVHFigures, diff: dict[str, float | None], qa: QAConfig
) -> list[str]:
    tol = qa.dvh
    crossed = []

    def relative(name: str) -> float | None:
        delta, base = diff.get(name), getattr(ref, name)
        return None if delta is None or not base else 100.0 * delta / base

    if structure.is_target:
        for name, limit in (("d95", tol.target_d95_percent), ("dmean", tol.target_dmean_percent)):
            rel = relative(name)
            if rel is not None and abs(rel) > limit:
                label = {"d95": "D95", "dmean": "Dmean"}[name]
                crossed.append(f"{structure.name} {label} {rel:+.1f}% (tolerance {limit:g}%)")
    else:
        for name, limit in (("dmean", tol.oar_dmean_gy), ("dmax", tol.oar_dmax_gy)):
            delta = diff.get(name)
            if delta is not None and abs(delta) > limit:
                crossed.append(
                    f"{structure.name} {name.capitalize()} {delta:+.2f} Gy (tolerance {limit:g} Gy)"
                )
    return crossed


def compare_structures(
    structures: Sequence[Structure],
    reference: DoseGrid,
    evaluated: DoseGrid,
    prescription_gy: float | None,
    qa: QAConfig,
) -> list[StructureComparison]:
    """DVH metrics of every structure on both doses (each on its own grid) and the
    tolerances crossed."""
    curve_max = max(float(reference.values.max(initial=0.0)), float(evaluated.values.max(initial=0.0)))
    result = []
    for structure in structures:
        ref = _figures(structure_dvh(structure, reference, prescription_gy, curve_max))
        ev = _figures(structure_dvh(structure, evaluated, prescription_gy, curve_max))
        diff = _difference(ref, ev)
        judged = (
            structure.kind not in NOT_JUDGED_TYPES
            and ref is not None
            and ev is not None
            and ref.volume_cc >= qa.dvh.min_volume_cc
        )
        crossed = _out_of_tolerance(structure, ref, diff, qa) if judged and ref is not None else []
        result.append(
            StructureComparison(
                number=structure.number,
                name=structure.name,
                kind=structure.kind,
                target=structure.is_target,
                judged=judged,
                reference=ref,
                evaluated=ev,
                difference=diff,
                out_of_tolerance=crossed,
            )
        )
    return result


def not_compared(label: str, reason: str, beam: int | None = None, **extra: Any) -> Comparison:
    return Comparison(label=label, beam_number=beam, verdict="not-compared", reasons=[reason], **extra)


def _comparable(reference: DoseGrid, evaluated: DoseGrid) -> tuple[str | None, float]:
    """(why the pair cannot be compared or None, overlap in %)."""
    ref_frame, ev_frame = reference.frame_of_reference_uid, evaluated.frame_of_reference_uid
    if ref_frame and ev_frame and ref_frame != ev_frame:
        return "different frame of reference", 0.0
    overlap = 100.0 * overlap_fraction(reference, evaluated)
    if overlap <= 0.0:
        return "the dose grids do not overlap", 0.0
    if float(reference.values.max(initial=0.0)) <= 0.0:
        return "the reference dose is zero everywhere", overlap
    return None, overlap


def _verdict(gamma: list[GammaFigures], structures: list[StructureComparison]) -> tuple[str, list[str]]:
    reasons = []
    verdict = "pass"
    for index, figures in enumerate(gamma):
        if figures.passed:
            continue
        reasons.append(
            f"gamma {figures.criterion}: {figures.pass_rate:.1f}% < {figures.required_pass_rate:g}%"
            + (f" ({figures.uncovered_voxels} voxels without MC dose)" if figures.uncovered_voxels else "")
        )
        verdict = "fail" if index == 0 else ("review" if verdict == "pass" else verdict)
    crossed = [item for s in structures for item in s.out_of_tolerance]
    if crossed and verdict == "pass":
        verdict = "review"
    reasons += crossed
    return verdict, reasons


def compare_grids(
    reference: DoseGrid,
    evaluated: DoseGrid,
    qa: QAConfig,
    *,
    label: str = "plan",
    beam: int | None = None,
    reference_role: str = "tps",
    structures: Sequence[Structure] = (),
    prescription_gy: float | None = None,
    isocentre: tuple[float, float, float] | None = None,
    evaluated_factor: float = 1.0,
) -> Comparison:
    """Compare ``evaluated`` (already scaled by ``evaluated_factor``) with ``reference``."""
    files = {"reference_file": reference.source or None, "evaluated_file": evaluated.source or None}
    common = {"reference_role": reference_role, "evaluated_factor": evaluated_factor, **files}
    reason, overlap = _comparable(reference, evaluated)
    if reason:
        return not_compared(label, reason, beam, overlap_percent=round(overlap, 3), **common)
    maps, figures = [], []
    for config in qa.criteria:
        started = time.perf_counter()
        result = gamma_index(
            reference, evaluated, criterion_of(config), steps=qa.steps_per_distance, max_gamma=qa.max_gamma
        )
        figures.append(gamma_figures(result, config.pass_rate, time.perf_counter() - started))
        maps.append(result.gamma)
    on_reference = sample(evaluated, reference.x, reference.y, reference.z)
    centre = isocentre or tuple(float(a[a.size // 2]) for a in (reference.x, reference.y, reference.z))
    compared = compare_structures(structures, reference, evaluated, prescription_gy, qa)
    verdict, reasons = _verdict(figures, compared)
    comparison = Comparison(
        label=label,
        beam_number=beam,
        verdict=verdict,  # type: ignore[arg-type]
        reasons=reasons,
        overlap_percent=round(overlap, 3),
        gamma=figures,
        dose_difference=dose_difference(reference, on_reference, qa.high_dose_percent),
        profiles=profiles(reference, evaluated, centre),  # type: ignore[arg-type]
        structures=compared,
        **common,
    )
    names = (
        ("TPS", "MC") if reference_role == "tps" else ("MC", "TPS") if reference_role == "mc" else ("A", "B")
    )
    comparison._arrays = ComparisonArrays(
        reference,
        on_reference,
        maps,
        centre,
        names[0],
        names[1],
        list(structures),  # type: ignore[arg-type]
    )
    return comparison


def compare_files(
    a: Path,
    b: Path,
    criteria: Sequence[GammaCriterionConfig] | None = None,
    *,
    qa: QAConfig | None = None,
    structure_file: Path | None = None,
) -> Comparison:
    """``mqi compare A.dcm B.dcm``: A is the reference, B is evaluated; no RBE factor."""
    settings = (qa or QAConfig()).model_copy(update={"criteria": list(criteria)} if criteria else {})
    try:
        reference, evaluated = read_dose(Path(a)), read_dose(Path(b))
    except DoseFileError as err:
        return not_compared("files", str(err), reference_role="a")
    structures = read_structures(structure_file) if structure_file else []
    return compare_grids(
        reference, evaluated, settings, label="files", reference_role="a", structures=structures
    )


# --- a whole case ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanFacts:
    """What the QA needs from the RT Ion Plan (never the patient's name)."""

    plan_uid: str = ""
    plan_label: str = ""
    patient_id: str = ""
    fractions: int = 1
    isocentre: tuple[float, float, float] | None = None
    prescription_gy: float | None = None


def read_plan_facts(path: Path | None) -> PlanFacts:
    if path is None:
        return PlanFacts()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError):
        return PlanFacts()
    groups = ds.get("FractionGroupSequence") or []
    fractions = int(groups[0].get("NumberOfFractionsPlanned", 1) or 1) if groups else 1
    isocentre = None
    for beam in ds.get("IonBeamSequence", []) or ds.get("BeamSequence", []) or []:
        points = beam.get("IonControlPointSequence") or beam.get("ControlPointSequence") or []
        if points and "IsocenterPosition" in points[0]:
            iso = [float(v) for v in points[0].IsocenterPosition]
            isocentre = (iso[0], iso[1], iso[2])
            break
    prescriptions = [
        float(ref.TargetPrescriptionDose)
        for ref in ds.get("DoseReferenceSequence", []) or []
        if ref.get("TargetPrescriptionDose") not in (None, "")
    ]
    return PlanFacts(
        plan_uid=str(ds.get("SOPInstanceUID", "")),
        plan_label=str(ds.get("RTPlanLabel", "")),
        patient_id=str(ds.get("PatientID", "")),
        fractions=fractions,
        isocentre=isocentre,
        prescription_gy=max(prescriptions) if prescriptions else None,
    )


@dataclass
class TpsDoses:
    plan: DoseGrid | None
    beams: dict[int, DoseGrid]
    problems: list[str]


def read_tps_doses(paths: Sequence[Path]) -> TpsDoses:
    """The TPS plan dose (the PLAN file, else the sum of the beam files) and beam doses."""
    plan, beams, problems = None, {}, []
    for path in paths:
        try:
            grid = read_dose(path)
        except DoseFileError as err:
            problems.append(str(err))
            continue
        if grid.summation_type == "BEAM" and len(grid.beam_numbers) == 1:
            beams[grid.beam_numbers[0]] = grid
        elif plan is None:
            plan = grid
    if plan is None and beams:
        plan = sum_doses([beams[n] for n in sorted(beams)])
    return TpsDoses(plan, beams, problems)


def _prescription(
    qa: QAConfig, facts: PlanFacts, structures: Sequence[Structure], tps: DoseGrid | None
) -> tuple[float | None, str]:
    if qa.prescription_gy:
        return qa.prescription_gy, "qa.prescription_gy"
    if facts.prescription_gy:
        return facts.prescription_gy, "plan TargetPrescriptionDose"
    target = next((s for s in structures if s.is_target), None)
    if target is not None and tps is not None:
        metrics = structure_dvh(target, tps, None, float(tps.values.max(initial=0.0)))
        if metrics is not None:
            return round(metrics.d50, 4), f"TPS D50 of {target.name}"
    return None, ""


def _read_mc(path: Path | None, factor: float) -> tuple[DoseGrid | None, str | None]:
    if path is None:
        return None, "no MC dose"
    try:
        return read_dose(path).scaled(factor), None
    except DoseFileError as err:
        return None, str(err)


def run_case_qa(
    *,
    mc_plan: Path | None,
    mc_beams: Mapping[int, Path],
    tps_files: Sequence[Path],
    qa: QAConfig,
    plan_file: Path | None = None,
    structure_file: Path | None = None,
    mc_dose_type: str = "EFFECTIVE",
    engine: Mapping[str, Any] | None = None,
    case_uid: str = "",
) -> CaseQA:
    """Compare a case's MC doses (plan and beams) with its TPS doses; the TPS dose is the
    reference unless ``qa.reference`` is ``mc``. Never raises for bad data: a case that
    cannot be compared gets verdict ``not-compared`` with the reason."""
    started = time.perf_counter()
    facts = read_plan_facts(plan_file)
    tps = read_tps_doses(tps_files)
    structures, structure_problem = [], None
    if structure_file is not None:
        try:
            structures = read_structures(structure_file)
        except StructureSetError as err:
            structure_problem = str(err)
    prescription, prescription_source = _prescription(qa, facts, structures, tps.plan)
    tps_type = tps.plan.dose_type if tps.plan is not None else ""
    factor = mc_to_tps_factor(mc_dose_type, tps_type, qa.rbe) if tps_type else 1.0
    pairs = [("plan", None, mc_plan, tps.plan)] + [
        (f"beam {n}", n, mc_beams[n], tps.beams.get(n)) for n in sorted(mc_beams)
    ]
    comparisons = [
        _compare_pair(label, beam, path, tps_grid, qa, factor, structures, prescription, facts)
        for label, beam, path, tps_grid in pairs
    ]
    plan_comparison = comparisons[0]
    verdict = worst([c.verdict for c in comparisons])
    reasons = [f"{c.label}: {reason}" for c in comparisons if c.verdict != "pass" for reason in c.reasons]
    if not tps_files:
        reasons = ["no TPS dose in the case"]
    reasons += tps.problems + ([structure_problem] if structure_problem else [])
    first = qa.criteria[0]
    return CaseQA(
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        case_uid=case_uid,
        plan_label=facts.plan_label,
        patient_id=facts.patient_id,
        plan_uid=facts.plan_uid,
        engine=dict(engine or {}),
        mc_dose_type=mc_dose_type,
        tps_dose_type=tps_type,
        rbe=qa.rbe,
        prescription_gy=prescription,
        prescription_source=prescription_source,
        criteria=criteria_labels(qa),
        verdict=verdict,  # type: ignore[arg-type]
        reasons=reasons,
        first_criterion=criterion_of(first).label,
        first_pass_rate=plan_comparison.first_pass_rate,
        comparisons=comparisons,
        seconds=round(time.perf_counter() - started, 3),
    )


def _compare_pair(
    label: str,
    beam: int | None,
    mc_path: Path | None,
    tps_grid: DoseGrid | None,
    qa: QAConfig,
    factor: float,
    structures: Sequence[Structure],
    prescription: float | None,
    facts: PlanFacts,
) -> Comparison:
    if tps_grid is None:
        return not_compared(label, "no TPS dose" + (" for this beam" if beam is not None else ""), beam)
    mc, problem = _read_mc(mc_path, factor)
    if mc is None:
        return not_compared(label, problem or "no MC dose", beam)
    reference, evaluated, role = (tps_grid, mc, "tps") if qa.reference == "tps" else (mc, tps_grid, "mc")
    return compare_grids(
        reference,
        evaluated,
        qa,
        label=label,
        beam=beam,
        reference_role=role,
        structures=structures,
        prescription_gy=prescription if beam is None else None,
        isocentre=facts.isocentre,
        evaluated_factor=factor,
    )
