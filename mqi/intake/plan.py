"""The RT Ion Plan: choosing it, reading its beams and checking them for MOQUI.

MOQUI reads the even-indexed control points only: every energy layer must be a
pair of control points (spots and weights on the first, the same energy and spot
count on the second). Layer meterset = the step of the cumulative meterset weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from mqi.intake.codes import Code
from mqi.intake.dicomio import Header, float32_values, number_or_nan, text, value_bytes
from mqi.intake.discover import Inventory
from mqi.intake.model import Beam, EnergyLayer, Plan
from mqi.intake.problems import Problems, listing
from mqi.intake.tags import (
    CUMULATIVE_METERSET_WEIGHT,
    FRAME_OF_REFERENCE_UID,
    NOMINAL_BEAM_ENERGY,
    NUMBER_OF_SCAN_SPOT_POSITIONS,
    PATIENT_ID,
    SCAN_SPOT_METERSET_WEIGHTS,
    SCAN_SPOT_POSITION_MAP,
    SOP_INSTANCE_UID,
)

FL_BYTES = 4
ENERGY_TOLERANCE_MEV = 1e-3
MAX_ENERGY_MEV = 1000.0  # beyond any therapy beam: a corrupt value
MAX_SPOT_POSITION_MM = 1000.0  # a scanned field is some 40 cm wide
MAX_COORDINATE_MM = 1e5
MAX_ANGLE_DEG = 360.0
MAX_BEAM_NUMBER = 2**31 - 1
WEIGHT_TOLERANCE = 1e-3  # relative, between a layer's spot weights and its cumulative step


@dataclass
class PlanInfo:
    """The chosen plan, what was read from it, and what other objects are checked against."""

    header: Header
    plan: Plan | None
    beams: list[Beam]
    patient_id: str | None
    structure_set_uids: list[str]


def select_plan(inventory: Inventory, plan_uid: str | None, problems: Problems) -> Header | None:
    plans = inventory.ion_plans
    if not plans:
        _no_plan(inventory, problems)
        return None
    uids = {h.path: text(h.dataset, SOP_INSTANCE_UID) or "" for h in plans}
    if plan_uid is not None:
        chosen = [h for h in plans if uids[h.path] == plan_uid]
        if not chosen:
            problems.error(
                Code.PLAN_NOT_FOUND,
                f"no RT Ion Plan with SOP Instance UID {plan_uid}; the folder holds "
                f"{listing([f'{uids[h.path]} ({problems.rel(h.path)})' for h in plans])}",
            )
            return None
        _note_ignored(plans, chosen[0], problems)
        return chosen[0]
    if len(plans) > 1:
        found = [f"{problems.rel(h.path)} ({uids[h.path]})" for h in plans]
        problems.error(
            Code.MULTIPLE_PLANS,
            f"{len(plans)} RT Ion Plans: {listing(found, limit=5)}; choose one with --plan UID",
            plans[0].path,
        )
        return None
    return plans[0]


def _no_plan(inventory: Inventory, problems: Problems) -> None:
    if inventory.photon_plans:
        path = inventory.photon_plans[0].path
        problems.error(
            Code.PHOTON_PLAN,
            f"{problems.rel(path)}: a photon RT Plan (BeamSequence); MOQUI needs an RT Ion Plan "
            "(IonBeamSequence): export the proton plan from the TPS",
            path,
        )
    else:
        problems.error(
            Code.NO_PLAN,
            "no RT Ion Plan in the folder; add the plan exported from the TPS",
        )


def _note_ignored(plans: list[Header], chosen: Header, problems: Problems) -> None:
    others = [problems.rel(h.path) for h in plans if h is not chosen]
    if others:
        problems.warn(Code.OTHER_PLANS_IGNORED, f"{listing(others)}: other RT Ion Plans, ignored")


def read_plan(header: Header, setup_names: Iterable[str], problems: Problems) -> PlanInfo:
    ds = header.dataset
    rel = problems.rel(header.path)
    info = PlanInfo(header, None, [], text(ds, PATIENT_ID), _structure_set_uids(ds))
    try:
        fractions, metersets = _fraction_scheme(ds, header, problems)
        frame = text(ds, FRAME_OF_REFERENCE_UID)
        if frame is None:
            problems.warn(
                Code.PLAN_NO_FRAME_OF_REFERENCE,
                f"{rel}: no Frame of Reference UID; the CT cannot be matched to the plan",
                header.path,
            )
        info.plan = Plan(
            label=str(ds.get("RTPlanLabel", "") or ""),
            sop_instance_uid=text(ds, SOP_INSTANCE_UID) or "",
            fractions=fractions,
            frame_of_reference_uid=frame,
            path=header.path,
        )
        info.beams = _beams(ds, metersets, {n.casefold() for n in setup_names}, rel, problems)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as err:
        problems.error(Code.PLAN_INVALID, f"{rel}: cannot be read as an RT Ion Plan: {err}", header.path)
    return info


def _structure_set_uids(ds: Dataset) -> list[str]:
    try:
        return [str(item.ReferencedSOPInstanceUID) for item in ds.get("ReferencedStructureSetSequence", [])]
    except (AttributeError, TypeError, ValueError):
        return []


def _fraction_scheme(ds: Dataset, header: Header, problems: Problems) -> tuple[int, dict[int, float]]:
    """Number of fractions and BeamMeterset by beam number, from the first fraction group."""
    groups = ds.get("FractionGroupSequence")
    if not groups:
        problems.error(
            Code.PLAN_NO_FRACTION_GROUP,
            f"{problems.rel(header.path)}: no FractionGroupSequence, so no beam metersets; "
            "re-export the plan",
            header.path,
        )
        return 1, {}
    group = groups[0]
    fractions = _fractions(group, header, problems)
    metersets: dict[int, float] = {}
    for ref in group.get("ReferencedBeamSequence", []):
        beam_number = ref.get("ReferencedBeamNumber")
        meterset = ref.get("BeamMeterset")
        if beam_number is not None and meterset not in (None, ""):
            metersets[int(beam_number)] = as_float(meterset)
    return fractions, metersets


def as_float(value: Any) -> float:
    """A DS/FL value as a float; NaN when it is not a number (so that it fails a check)."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _fractions(group: Dataset, header: Header, problems: Problems) -> int:
    """NumberOfFractionsPlanned: a whole number >= 1; missing is taken as 1 with a warning."""
    raw = group.get("NumberOfFractionsPlanned")
    rel = problems.rel(header.path)
    if raw in (None, ""):
        problems.warn(
            Code.PLAN_FRACTIONS_INVALID,
            f"{rel}: NumberOfFractionsPlanned is missing; taken as 1",
            header.path,
        )
        return 1
    value = as_float(raw)
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        problems.error(
            Code.PLAN_FRACTIONS_INVALID,
            f"{rel}: NumberOfFractionsPlanned is {raw}; it must be a whole number >= 1: re-export the plan",
            header.path,
        )
        return 1
    return int(value)


def _is_setup(item: Dataset, setup_names: set[str]) -> bool:
    delivery = str(item.get("TreatmentDeliveryType", "") or "").upper()
    name = str(item.get("BeamName", "") or "").strip().casefold()
    return delivery == "SETUP" or name in setup_names


def _beams(
    ds: Dataset, metersets: dict[int, float], setup_names: set[str], rel: str, problems: Problems
) -> list[Beam]:
    items = list(ds.get("IonBeamSequence") or [])
    treatment = [(i, item) for i, item in enumerate(items) if not _is_setup(item, setup_names)]
    if not treatment:
        problems.error(
            Code.NO_TREATMENT_BEAMS,
            f"{rel}: no treatment beams ({len(items)} beams, all setup); nothing to simulate",
        )
        return []
    beams = []
    for index, item in treatment:
        beam = _beam(item, index, metersets, rel, problems)
        if beam is not None:
            beams.append(beam)
    _duplicate_numbers(beams, rel, problems)
    return beams


def _duplicate_numbers(beams: list[Beam], rel: str, problems: Problems) -> None:
    seen: set[int] = set()
    for beam in beams:
        if beam.number in seen:
            problems.error(
                Code.BEAM_NUMBER_DUPLICATE,
                f"{rel}: beam number {beam.number} is used twice; beam numbers must be unique",
            )
        seen.add(beam.number)


def _label(item: Dataset, index: int) -> str:
    name = str(item.get("BeamName", "") or "")
    beam_number = item.get("BeamNumber")
    return f"beam {beam_number if beam_number is not None else f'#{index + 1}'} {name!r}".rstrip()


def _beam(
    item: Dataset, index: int, metersets: dict[int, float], rel: str, problems: Problems
) -> Beam | None:
    label = f"{rel}: {_label(item, index)}"
    try:
        beam_number = int(item.BeamNumber)
        points = list(item.get("IonControlPointSequence") or [])
        first = points[0] if points else Dataset()
        isocenter = [as_float(v) for v in first.get("IsocenterPosition") or []]
    except (AttributeError, TypeError, ValueError, OverflowError) as err:
        problems.error(Code.BEAM_INVALID, f"{label}: cannot be read: {err}")
        return None
    if not 0 <= beam_number <= MAX_BEAM_NUMBER:
        problems.error(
            Code.BEAM_NUMBER_INVALID,
            f"{label}: BeamNumber {beam_number} is negative or too large; MOQUI and the bundle "
            "need a number from 0 to 2147483647",
        )
    radiation = str(item.get("RadiationType", "") or "").upper()
    if radiation != "PROTON":
        problems.error(
            Code.BEAM_NOT_PROTON,
            f"{label}: radiation type {radiation or 'missing'}; MOQUI simulates PROTON beams only",
        )
    layers, consistent = _layers(points, label, problems)
    spots = sum(layer.spots for layer in layers)
    if spots == 0:
        problems.error(Code.BEAM_NO_SPOTS, f"{label}: no scan spots; nothing to simulate")
    elif consistent:
        _check_cumulative(item, points, label, problems)
    meterset = metersets.get(beam_number, 0.0)
    if not math.isfinite(meterset) or meterset < 0:
        problems.error(
            Code.BEAM_METERSET_INVALID,
            f"{label}: BeamMeterset is {meterset:g} in the fraction group; it must be a finite number > 0",
        )
    elif meterset == 0:
        shown = f"{meterset:g}" if beam_number in metersets else "missing"
        problems.error(
            Code.BEAM_ZERO_METERSET,
            f"{label}: BeamMeterset is {shown} in the fraction group; the beam would deliver nothing",
        )
    if not points or len(isocenter) != 3 or first.get("GantryAngle") in (None, ""):
        problems.error(
            Code.BEAM_INVALID,
            f"{label}: the first control point lacks GantryAngle or IsocenterPosition",
        )
        return None
    gantry = as_float(first.GantryAngle)
    couch = as_float(first.get("PatientSupportAngle") or 0.0)
    angles_ok = all(math.isfinite(a) and abs(a) <= MAX_ANGLE_DEG for a in (gantry, couch))
    if not angles_ok or not all(math.isfinite(v) and abs(v) < MAX_COORDINATE_MM for v in isocenter):
        problems.error(
            Code.BEAM_GEOMETRY_INVALID,
            f"{label}: GantryAngle {gantry:g}, PatientSupportAngle {couch:g}, IsocenterPosition "
            f"{', '.join(f'{v:g}' for v in isocenter)}: angles must be finite degrees "
            "(-360 to 360) and the isocentre a finite position in mm",
        )
        return None
    if not all(math.isfinite(layer.meterset_weight) for layer in layers) or not math.isfinite(meterset):
        return None
    return Beam(
        number=beam_number,
        name=str(item.get("BeamName", "") or ""),
        sequence_index=index,
        machine=str(item.get("TreatmentMachineName", "") or ""),
        radiation_type=radiation,
        gantry_angle=gantry,
        couch_angle=couch,
        isocenter=(isocenter[0], isocenter[1], isocenter[2]),
        range_shifters=int(item.get("NumberOfRangeShifters") or 0),
        blocks=int(item.get("NumberOfBlocks") or 0),
        layers=layers,
        spots=spots,
        meterset=meterset,
    )


def _float_list(point: Dataset, keyword: str) -> list[float]:
    value = point.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, bytes | bytearray):  # an undecoded FL value
        return [as_float(v) for v in memoryview(value[: len(value) // FL_BYTES * FL_BYTES]).cast("f")]
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return [as_float(value)]
    return [as_float(v) for v in value]


def _spot_floats(point: Dataset, keyword: str, tag: int) -> np.ndarray:
    """:func:`_float_list` as a float64 array; a plain FL value is read from its bytes in
    one step (a plan holds tens of thousands of spot values)."""
    found = float32_values(point, tag)
    if found is not None:
        return found.astype(np.float64)
    return np.array(_float_list(point, keyword), dtype=np.float64)


def _check_cumulative(item: Dataset, points: list[Dataset], label: str, problems: Problems) -> None:
    """The cumulative meterset weights: finite, from 0 up to FinalCumulativeMetersetWeight,
    each step the sum of the spot weights delivered over it; some weight delivered."""
    cumulative = [as_float(p.get("CumulativeMetersetWeight")) for p in points]
    final = as_float(item.get("FinalCumulativeMetersetWeight", cumulative[-1] if cumulative else 0))
    if not all(math.isfinite(v) for v in [*cumulative, final]):
        problems.error(
            Code.CUMULATIVE_METERSET_INVALID,
            f"{label}: CumulativeMetersetWeight or FinalCumulativeMetersetWeight is not a finite number",
        )
        return
    weights = [_weights_sum(p) for p in points]
    if final <= 0 or sum(weights) <= 0:
        problems.error(
            Code.BEAM_NO_DELIVERABLE_WEIGHT,
            f"{label}: the spot weights add up to {sum(weights):g} and FinalCumulativeMetersetWeight "
            f"is {final:g}; the beam delivers nothing",
        )
        return
    found = []
    if abs(cumulative[0]) > WEIGHT_TOLERANCE * final:
        found.append(f"the first control point starts at {cumulative[0]:g}, not 0")
    if abs(cumulative[-1] - final) > WEIGHT_TOLERANCE * final:
        found.append(f"the last control point ends at {cumulative[-1]:g}, not at the final {final:g}")
    for k in range(len(points) - 1):
        step = cumulative[k + 1] - cumulative[k]
        if abs(step - weights[k]) > WEIGHT_TOLERANCE * max(abs(step), weights[k]) + 1e-6 * final:
            found.append(
                f"control points {k} to {k + 1} step by {step:g} "
                f"but the spot weights add up to {weights[k]:g}"
            )
            break
    if found:
        problems.error(
            Code.CUMULATIVE_METERSET_INVALID,
            f"{label}: cumulative meterset weights do not add up ({listing(found)}); re-export the plan",
        )


@dataclass
class _PairIssues:
    """Problems of one beam's control points, reported once per kind."""

    not_paired: list[str]
    spot_data: list[str]
    energies: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    cumulative: list[str] = field(default_factory=list)


def _layers(points: list[Dataset], label: str, problems: Problems) -> tuple[list[EnergyLayer], bool]:
    """The energy layers, and whether the control points are consistent enough for the
    cumulative weights to be checked."""
    issues = _PairIssues([], [])
    if len(points) % 2:
        issues.not_paired.append(f"{len(points)} control points, an odd number")
    layers: list[EnergyLayer] = []
    energy: float | None = None
    for k in range(0, len(points) - 1, 2):
        layer = _layer(points[k], points[k + 1], k, energy, issues)
        if layer is not None:
            energy = layer.energy_mev
            layers.append(layer)
    if issues.not_paired:
        problems.error(
            Code.CONTROL_POINTS_NOT_PAIRED,
            f"{label}: control points are not in layer pairs ({listing(issues.not_paired)}); "
            "MOQUI reads two control points per energy layer",
        )
    if issues.spot_data:
        problems.error(
            Code.SPOT_DATA_MISMATCH,
            f"{label}: spot data disagree with NumberOfScanSpotPositions ({listing(issues.spot_data)})",
        )
    if issues.energies:
        problems.error(
            Code.SPOT_ENERGY_INVALID,
            f"{label}: NominalBeamEnergy must be a finite number of MeV > 0 and <= {MAX_ENERGY_MEV:g} "
            f"({listing(issues.energies)})",
        )
    if issues.weights:
        problems.error(
            Code.SPOT_WEIGHT_INVALID,
            f"{label}: ScanSpotMetersetWeights must be finite and >= 0 ({listing(issues.weights)})",
        )
    if issues.positions:
        problems.error(
            Code.SPOT_POSITION_INVALID,
            f"{label}: ScanSpotPositionMap must hold finite positions within "
            f"{MAX_SPOT_POSITION_MM:g} mm ({listing(issues.positions)})",
        )
    if issues.cumulative:
        problems.error(
            Code.CUMULATIVE_METERSET_INVALID,
            f"{label}: CumulativeMetersetWeight is not a finite number ({listing(issues.cumulative)})",
        )
    consistent = not (
        issues.not_paired
        or issues.spot_data
        or issues.energies
        or issues.weights
        or issues.positions
        or issues.cumulative
    )
    return layers, consistent


def _layer(
    first: Dataset, second: Dataset, k: int, energy: float | None, issues: _PairIssues
) -> EnergyLayer | None:
    energy_first = _or(number_or_nan(first, NOMINAL_BEAM_ENERGY), energy)
    energy_second = _or(number_or_nan(second, NOMINAL_BEAM_ENERGY), energy_first)
    if energy_first is None:
        issues.not_paired.append(f"control point {k} has no NominalBeamEnergy")
        return None
    for index, value in ((k, energy_first), (k + 1, energy_second)):
        if value is not None and not (math.isfinite(value) and 0 < value <= MAX_ENERGY_MEV):
            issues.energies.append(f"control point {index}: {value:g} MeV")
            return None
    if energy_second is not None and abs(energy_second - energy_first) > ENERGY_TOLERANCE_MEV:
        issues.not_paired.append(
            f"control points {k} and {k + 1} have energies {energy_first:g} and {energy_second:g} MeV"
        )
    spots_first = number_or_nan(first, NUMBER_OF_SCAN_SPOT_POSITIONS)
    spots_second = number_or_nan(second, NUMBER_OF_SCAN_SPOT_POSITIONS)
    if spots_first is not None and not (math.isfinite(spots_first) and 0 <= spots_first < 2**31):
        issues.spot_data.append(f"control point {k}: NumberOfScanSpotPositions {spots_first:g}")
        return None
    if spots_second is not None and spots_first != spots_second:
        issues.not_paired.append(
            f"control points {k} and {k + 1} have {spots_first or 0:g} and {spots_second:g} spots"
        )
    spots = int(spots_first or 0)
    _check_spot_arrays(first, k, spots, issues)
    _check_spot_values(first, k, issues)
    _check_spot_values(second, k + 1, issues)
    start = number_or_nan(first, CUMULATIVE_METERSET_WEIGHT)
    end = number_or_nan(second, CUMULATIVE_METERSET_WEIGHT)
    if start is not None and end is not None and end < start:
        issues.not_paired.append(f"cumulative meterset weight decreases at control point {k + 1}")
    weight = end - start if start is not None and end is not None else _weights_sum(first)
    if not math.isfinite(weight):
        issues.cumulative.append(f"control points {k} and {k + 1}: {start:g} and {end:g}")
        return None
    return EnergyLayer(energy_mev=energy_first, spots=spots, meterset_weight=max(weight, 0.0))


def _or(value: float | None, default: float | None) -> float | None:
    return default if value is None else value


def _check_spot_values(point: Dataset, k: int, issues: _PairIssues) -> None:
    weights = _spot_floats(point, "ScanSpotMetersetWeights", SCAN_SPOT_METERSET_WEIGHTS)
    bad = weights[~(np.isfinite(weights) & (weights >= 0))]
    if bad.size:
        issues.weights.append(f"control point {k}: {float(bad[0]):g}")
    positions = _spot_floats(point, "ScanSpotPositionMap", SCAN_SPOT_POSITION_MAP)
    far = positions[~(np.isfinite(positions) & (np.abs(positions) <= MAX_SPOT_POSITION_MM))]
    if far.size:
        issues.positions.append(f"control point {k}: {float(far[0]):g}")


def _check_spot_arrays(point: Dataset, k: int, spots: int, issues: _PairIssues) -> None:
    positions = value_bytes(point, SCAN_SPOT_POSITION_MAP)
    weights = value_bytes(point, SCAN_SPOT_METERSET_WEIGHTS)
    found = []
    if positions is not None and positions != 2 * FL_BYTES * spots:
        found.append(f"{positions // (2 * FL_BYTES)} positions")
    if weights is not None and weights != FL_BYTES * spots:
        found.append(f"{weights // FL_BYTES} weights")
    if found:
        issues.spot_data.append(f"control point {k}: {' and '.join(found)} for {spots} spots")


def _weights_sum(point: Dataset) -> float:
    return float(sum(_spot_floats(point, "ScanSpotMetersetWeights", SCAN_SPOT_METERSET_WEIGHTS).tolist()))
