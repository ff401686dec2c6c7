"""`read_case`: a case folder in, a checked `Case` (or every problem with it) out."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqi.config import Config
from mqi.intake.codes import Code
from mqi.intake.ct import CTResult, Slice, check_ct
from mqi.intake.discover import Inventory, discover
from mqi.intake.doses import tps_doses
from mqi.intake.identity import case_id, case_uid
from mqi.intake.model import Beam, Case, CTGrid, Plan, Problem, StructureSet, TPSDose
from mqi.intake.plan import PlanInfo, read_plan, select_plan
from mqi.intake.problems import Problems, listing
from mqi.intake.structures import StructureChecks, StructureInfo, check_structures
from mqi.textsafe import escape_control, json_safe, shell_quote_path

DEFAULT_SETUP_BEAM_NAMES = ("SETUP", "Site Setup")
DEFAULT_BODY_CONTOUR = "External"
TRUE_WORDS = frozenset({"true", "yes", "1", "on"})


def _parameter(parameters: dict[str, Any], key: str) -> Any:
    """A MOQUI parameter by case-insensitive key; MOQUI takes the first occurrence."""
    for name, value in parameters.items():
        if name.casefold() == key.casefold():
            return value
    return None


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().casefold() in TRUE_WORDS


@dataclass(frozen=True)
class IntakeOptions:
    """What the checks depend on, from the config and the command line."""

    setup_beam_names: tuple[str, ...] = DEFAULT_SETUP_BEAM_NAMES
    allow_patient_id_mismatch: bool = False
    read_structure: bool = False
    body_contour_name: str = DEFAULT_BODY_CONTOUR
    plan_uid: str | None = None
    mc_dose_type: str | None = None  # moqui.dose_type; None: the dose type is not checked
    engine_parameters: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_config(cls, config: Config, plan_uid: str | None = None) -> IntakeOptions:
        parameters = config.moqui.parameters
        body = _parameter(parameters, "BodyContourName")
        read_structure = _parameter(parameters, "ReadStructure")
        return cls(
            setup_beam_names=tuple(config.intake.setup_beam_names),
            allow_patient_id_mismatch=config.intake.allow_patient_id_mismatch,
            read_structure=read_structure is not None and _truthy(read_structure),
            body_contour_name=str(body).strip() if body not in (None, "") else DEFAULT_BODY_CONTOUR,
            plan_uid=plan_uid,
            mc_dose_type=config.moqui.dose_type,
            engine_parameters=tuple(parameters.items()),
        )


@dataclass
class IntakeResult:
    """Everything learnt about a case folder: the Case when valid, what is known otherwise."""

    source_dir: Path
    case: Case | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    case_id: str | None = None
    plan: Plan | None = None
    beams: list[Beam] = field(default_factory=list)
    ct: CTGrid | None = None
    structure_set: StructureSet | None = None
    tps_doses: list[TPSDose] = field(default_factory=list)
    log_dir: Path | None = None
    log_files: list[Path] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors and self.case is not None

    def rejection(self, case_dir: Path | None = None) -> str:
        """The one line `mqi submit` shows for a rejected case: the first error with its
        code, and the check command to see them all with the path quoted for a shell."""
        first = self.errors[0] if self.errors else None
        head = f"[{first.code}] {first.message}" if first else "invalid case"
        more = f" and {len(self.errors) - 1} more" if len(self.errors) > 1 else ""
        where = shell_quote_path(case_dir if case_dir is not None else self.source_dir)
        return f"case rejected: {head}{more} (see `mqi check {where}`)"

    def to_json(self) -> dict[str, Any]:
        """The `mqi check --json` shape of DESIGN.md: strict JSON (no NaN or Infinity; names
        from files with their control characters escaped)."""
        return json_safe(
            {
                "valid": self.valid,
                "errors": [{"code": p.code, "message": p.message} for p in self.errors],
                "warnings": [{"code": p.code, "message": p.message} for p in self.warnings],
                "case_id": self.case_id,
                "plan": _plan_json(self.plan),
                "beams": [_beam_json(b) for b in self.beams],
                "ct": _ct_json(self.ct),
                "structures": [escape_control(s.name) for s in self.structure_set.structures]
                if self.structure_set
                else [],
                "tps_doses": [_dose_json(d, self.source_dir) for d in self.tps_doses],
            }
        )


def _plan_json(plan: Plan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {
        "label": escape_control(plan.label),
        "sop_instance_uid": plan.sop_instance_uid,
        "fractions": plan.fractions,
    }


def _beam_json(beam: Beam) -> dict[str, Any]:
    return {
        "number": beam.number,
        "name": escape_control(beam.name),
        "gantry_angle": beam.gantry_angle,
        "layers": len(beam.layers),
        "spots": beam.spots,
        "meterset": beam.meterset,
    }


def _ct_json(ct: CTGrid | None) -> dict[str, Any] | None:
    if ct is None:
        return None
    return {"slices": ct.slices, "rows": ct.rows, "columns": ct.columns, "spacing": list(ct.spacing)}


def _dose_json(dose: TPSDose, root: Path) -> dict[str, Any]:
    try:
        file = dose.path.relative_to(root).as_posix()
    except ValueError:
        file = str(dose.path)
    return {
        "file": escape_control(file),
        "summation_type": dose.summation_type,
        "dose_type": dose.dose_type,
        "beam_number": dose.beam_number,
    }


def read_case(case_dir: Path, options: IntakeOptions | None = None) -> IntakeResult:
    """Read and check a case folder. Never raises for bad input: every problem is listed."""
    options = options or IntakeOptions()
    case_dir = Path(case_dir)
    result = IntakeResult(source_dir=case_dir)
    problems = Problems(case_dir)
    try:
        with _quietly():
            _read(case_dir, options, problems, result)
    except Exception as err:  # bad input must end as a listed problem, not a traceback
        problems.error(
            Code.INTAKE_FAILED,
            f"{Problems.show(case_dir)}: the case could not be read ({type(err).__name__}: {err})",
            case_dir,
        )
    result.errors, result.warnings = problems.errors, problems.warnings
    if result.errors:
        result.case = None
    return result


@contextmanager
def _quietly() -> Iterator[None]:
    """Reading keeps every header alive until the checks are done, so the cyclic garbage
    collector would re-scan them again and again (about 10% of the intake time).
    pydicom's warnings about odd files are silenced too: the checks report them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if enabled:
            gc.enable()


def _read(case_dir: Path, options: IntakeOptions, problems: Problems, result: IntakeResult) -> None:
    if not case_dir.is_dir():
        what = "is not a folder" if case_dir.exists() else "does not exist"
        problems.error(
            Code.CASE_DIR_MISSING, f"{Problems.show(case_dir)}: {what}; give the case folder", case_dir
        )
        return
    inventory = discover(case_dir, problems)
    result.log_dir = inventory.log_dir
    result.log_files = sorted(inventory.log_files)
    if inventory.dicom_count == 0 and inventory.unreadable == 0:
        problems.error(
            Code.NO_DICOM_FILES,
            f"{Problems.show(case_dir)}: no DICOM files; is this the case folder?",
            case_dir,
        )
        return
    plan_info = _plan(inventory, options, problems)
    plan = plan_info.plan if plan_info else None
    result.plan, result.beams = plan, plan_info.beams if plan_info else []
    plan_frame = plan.frame_of_reference_uid if plan else None
    if plan is not None:
        result.case_id = case_id(case_dir, plan.sop_instance_uid)
    ct = check_ct(inventory.ct, plan_frame, problems)
    result.ct = ct.grid
    structures = check_structures(
        inventory.structure_sets,
        StructureChecks(
            read_structure=options.read_structure,
            body_contour_name=options.body_contour_name,
            plan_structure_uids=plan_info.structure_set_uids if plan_info else [],
            plan_frame=plan_frame,
            ct_slices=ct.slices,
        ),
        problems,
    )
    result.structure_set = structures.structure_set if structures else None
    result.tps_doses = tps_doses(inventory.doses, plan.sop_instance_uid if plan else None, problems)
    if plan_info is not None:
        _check_patient_ids(plan_info, ct, structures, options, problems)
        _check_isocentres(plan_info, result.beams, ct.grid, problems)
    if plan is not None and options.mc_dose_type:
        _check_dose_type(plan.fractions, result.tps_doses, options, problems)
    if plan is not None and ct.grid is not None and result.beams and not problems.errors:
        result.case = Case(
            case_id=result.case_id or "",
            case_uid=case_uid(case_dir, plan.sop_instance_uid),
            source_dir=case_dir.resolve(),
            plan=plan,
            beams=result.beams,
            ct=ct.grid,
            structure_set=result.structure_set,
            tps_doses=result.tps_doses,
            log_dir=result.log_dir,
            log_files=result.log_files,
            warnings=list(problems.warnings),
        )


def _plan(inventory: Inventory, options: IntakeOptions, problems: Problems) -> PlanInfo | None:
    header = select_plan(inventory, options.plan_uid, problems)
    if header is None:
        return None
    return read_plan(header, options.setup_beam_names, problems)


def _check_patient_ids(
    plan: PlanInfo,
    ct: CTResult,
    structures: StructureInfo | None,
    options: IntakeOptions,
    problems: Problems,
) -> None:
    """The IDs themselves are never printed: a message names only the files."""
    error = not options.allow_patient_id_mismatch
    advice = (
        "allowed by intake.allow_patient_id_mismatch"
        if not error
        else "check the files belong to one patient (or set intake.allow_patient_id_mismatch)"
    )
    plan_rel = problems.rel(plan.header.path)
    odd_ct: list[Slice] = [s for s in ct.slices if s.patient_id != plan.patient_id]
    if odd_ct:
        problems.add(
            Code.PATIENT_ID_MISMATCH,
            f"{plan_rel}: PatientID differs from the CT's "
            f"({listing([problems.rel(s.path) for s in odd_ct], 1)}); {advice}",
            plan.header.path,
            error=error,
        )
    if structures is not None and structures.patient_id != plan.patient_id:
        problems.add(
            Code.PATIENT_ID_MISMATCH,
            f"{plan_rel}: PatientID differs from the structure set's "
            f"({problems.rel(structures.header.path)}); {advice}",
            plan.header.path,
            error=error,
        )


def _check_dose_type(
    fractions: int, doses: list[TPSDose], options: IntakeOptions, problems: Problems
) -> None:
    """The MC dose and the TPS dose must mean the same thing, or QA compares apples with 1.1 apples."""
    from mqi.qa.dosetype import dose_type_problems

    reference = next((d for d in doses if d.beam_number is None), doses[0] if doses else None)
    for message in dose_type_problems(
        mc_dose_type=options.mc_dose_type or "EFFECTIVE",
        parameters=dict(options.engine_parameters),
        plan_fractions=fractions,
        tps_dose_type=reference.dose_type if reference else None,
        tps_summation_type=reference.summation_type if reference else None,
    ):
        problems.error(Code.DOSE_TYPE_MISMATCH, message, reference.path if reference else None)


def _check_isocentres(plan: PlanInfo, beams: list[Beam], grid: CTGrid | None, problems: Problems) -> None:
    if grid is None:
        return
    low = grid.origin
    high = (
        low[0] + (grid.columns - 1) * grid.spacing[0],
        low[1] + (grid.rows - 1) * grid.spacing[1],
        low[2] + (grid.slices - 1) * grid.spacing[2],
    )
    for beam in beams:
        if not all(lo - 1e-6 <= v <= hi + 1e-6 for v, lo, hi in zip(beam.isocenter, low, high, strict=True)):
            problems.warn(
                Code.ISOCENTER_OUTSIDE_CT,
                f"{problems.rel(plan.header.path)}: beam {beam.number} {beam.name!r}: isocentre "
                f"{', '.join(f'{v:g}' for v in beam.isocenter)} mm lies outside the CT",
            )
