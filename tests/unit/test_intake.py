"""Intake as a whole: every problem listed, never a traceback, identities, JSON and report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from rich.console import Console

from mqi.config import parse_config
from mqi.intake import IntakeOptions, case_id, case_uid, read_case, sanitise_name
from mqi.intake.report import render_check
from mqi.testing.synthetic import SyntheticCase
from tests.unit.intake_fixtures import (  # noqa: F401 (fixtures)
    PATIENT_NAME,
    case_fixture,
    check,
    codes,
    edit,
    new_uid,
    pristine_fixture,
)

# --- bad input never raises --------------------------------------------------------------


def test_missing_folder_is_a_problem(tmp_path: Path) -> None:
    result = read_case(tmp_path / "nowhere", IntakeOptions())
    assert codes(result) == ["CASE_DIR_MISSING"]
    assert result.to_json()["valid"] is False


def test_a_file_instead_of_a_folder(tmp_path: Path) -> None:
    file = tmp_path / "plan.dcm"
    file.write_text("x")
    assert codes(read_case(file, IntakeOptions())) == ["CASE_DIR_MISSING"]


def test_empty_folder(tmp_path: Path) -> None:
    result = read_case(tmp_path, IntakeOptions())
    assert codes(result) == ["NO_DICOM_FILES"]


GARBAGE = {
    "empty.dcm": b"",
    "short.dcm": b"DICM",
    "random.dcm": bytes(range(256)) * 40,
    "fake_magic.dcm": bytes(128) + b"DICM" + b"\xff" * 300,
    "preamble_only.dcm": bytes(128) + b"DICM",
    "notes.txt": "über-notes\n".encode(),
    "binary.bin": os.urandom(5000),
}


def test_garbage_files_never_raise(tmp_path: Path) -> None:
    for name, data in GARBAGE.items():
        (tmp_path / name).write_bytes(data)
    result = read_case(tmp_path, IntakeOptions())
    assert not result.valid
    reported = " ".join(p.message for p in result.errors)
    for name in GARBAGE:
        if name.endswith(".dcm"):
            assert name in reported
    assert {"DICOM_UNREADABLE", "DICOM_TRUNCATED"} >= set(codes(result)) - {"NO_PLAN", "CT_MISSING"}


def test_every_truncation_of_the_plan_is_reported(case: SyntheticCase) -> None:
    data = case.plan.read_bytes()
    for cut in range(150, len(data), max(1, len(data) // 60)):
        case.plan.write_bytes(data[:cut])
        result = read_case(case.folder, IntakeOptions())
        assert not result.valid, f"cut at {cut} of {len(data)} bytes went unnoticed"


def test_unreadable_file_is_reported(case: SyntheticCase) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    case.ct[0].chmod(0)
    try:
        result = read_case(case.folder, IntakeOptions())
    finally:
        case.ct[0].chmod(0o644)
    assert "DICOM_UNREADABLE" in codes(result)


# --- many problems at once ---------------------------------------------------------------


def _break_everything(case: SyntheticCase) -> None:
    """Twenty independent problems in one folder."""
    folder = case.folder
    second = folder / "RP_second.dcm"
    shutil.copy(case.plan, second)
    edit(second, new_uid)  # 1 MULTIPLE_PLANS (plan checks then need --plan)
    (folder / "broken.dcm").write_bytes(b"garbage" * 50)  # 2 DICOM_UNREADABLE
    case.ct[10].write_bytes(case.ct[10].read_bytes()[:-50])  # 3 DICOM_TRUNCATED (and a gap)
    other = pydicom.uid.generate_uid()
    edit(case.ct[11], lambda ds: setattr(ds, "SeriesInstanceUID", other))  # 4 CT_MIXED_SERIES
    edit(case.ct[0], lambda ds: setattr(ds, "FrameOfReferenceUID", other))  # 5 CT_FRAME_OF_REFERENCE
    edit(case.ct[1], lambda ds: delattr(ds, "PixelSpacing"))  # 6 CT_ATTRIBUTE_MISSING
    edit(case.ct[2], lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]))  # 7
    edit(case.ct[3], lambda ds: setattr(ds, "Rows", 10))  # 8 CT_SIZE_MISMATCH
    edit(case.ct[4], lambda ds: setattr(ds, "BitsAllocated", 8))  # 9 CT_PIXEL_FORMAT
    copy = case.ct[5].with_name("CT_dup.dcm")
    shutil.copy(case.ct[5], copy)
    edit(copy, new_uid)  # 10 CT_DUPLICATE_POSITION

    def shift(ds: Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + 1, y, z + 0.8]

    edit(case.ct[7], shift)  # 11 CT_UNEVEN_SPACING, 12 CT_POSITION_MISMATCH
    edit(case.ct[6], lambda ds: setattr(ds, "PixelSpacing", [1, 1]))  # 13 CT_PIXEL_SPACING_MISMATCH
    case.ct[9].unlink()  # and with slice 10 unusable: CT_GAP

    def rois(ds: Dataset) -> None:
        ds.StructureSetROISequence[0].ROIName = "Body"  # 14 BODY_CONTOUR_MISSING
        study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        study.RTReferencedSeriesSequence[0].SeriesInstanceUID = other  # 15 RTSTRUCT_NOT_REFERENCING_CT
        ds.PatientID = "SOMEONE-ELSE"  # 16 PATIENT_ID_MISMATCH

    edit(case.rtstruct, rois)

    def plan(ds: Dataset) -> None:
        beam1, beam2 = ds.IonBeamSequence
        beam1.RadiationType = "ION"  # 17 BEAM_NOT_PROTON
        del beam1.IonControlPointSequence[-1]  # 18 CONTROL_POINTS_NOT_PAIRED
        ds.FractionGroupSequence[0].ReferencedBeamSequence[1].BeamMeterset = 0  # 19 ZERO_METERSET
        beam2.IonControlPointSequence[0].NumberOfScanSpotPositions = 3  # 20 SPOT_DATA_MISMATCH

    edit(case.plan, plan)


EXPECTED = {
    "DICOM_UNREADABLE",
    "DICOM_TRUNCATED",
    "CT_MIXED_SERIES",
    "CT_FRAME_OF_REFERENCE",
    "CT_ATTRIBUTE_MISSING",
    "CT_NOT_AXIAL",
    "CT_SIZE_MISMATCH",
    "CT_PIXEL_FORMAT",
    "CT_DUPLICATE_POSITION",
    "CT_UNEVEN_SPACING",
    "CT_POSITION_MISMATCH",
    "CT_PIXEL_SPACING_MISMATCH",
    "CT_GAP",
    "BODY_CONTOUR_MISSING",
    "RTSTRUCT_NOT_REFERENCING_CT",
    "PATIENT_ID_MISMATCH",
    "BEAM_NOT_PROTON",
    "CONTROL_POINTS_NOT_PAIRED",
    "BEAM_ZERO_METERSET",
    "SPOT_DATA_MISMATCH",
}


def test_many_problems_are_all_listed(case: SyntheticCase) -> None:
    _break_everything(case)
    result = read_case(case.folder, IntakeOptions(read_structure=True, plan_uid=case.plan_uid))
    found = set(codes(result))
    assert found >= EXPECTED, sorted(EXPECTED - found)
    assert len(EXPECTED) == 20
    assert result.case is None
    # without --plan the plan is not chosen, and that is one more problem
    assert "MULTIPLE_PLANS" in codes(read_case(case.folder, IntakeOptions(read_structure=True)))


def test_every_problem_is_one_line(case: SyntheticCase) -> None:
    _break_everything(case)
    result = read_case(case.folder, IntakeOptions(read_structure=True, plan_uid=case.plan_uid))
    for problem in result.errors + result.warnings:
        assert "\n" not in problem.message
        assert problem.code.isupper()


def test_invalid_report_lists_every_error(case: SyntheticCase) -> None:
    _break_everything(case)
    result = read_case(case.folder, IntakeOptions(read_structure=True, plan_uid=case.plan_uid))
    console = Console(record=True, width=300)
    console.print(render_check(result))
    text = console.export_text()
    assert text.startswith("INVALID")
    for problem in result.errors:
        assert problem.code in text


# --- identity ----------------------------------------------------------------------------


def test_case_id_is_the_sanitised_folder_and_a_plan_hash(case: SyntheticCase) -> None:
    result = check(case.folder)
    assert result.case is not None
    assert result.case.case_id == case_id(case.folder, case.plan_uid)
    assert result.case.case_id.startswith("Case_01-")
    assert len(result.case.case_id.split("-")[-1]) == 8


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Müller, Hans (re-plan)", "M_ller_Hans_re-plan"),
        ("..hidden", "hidden"),
        ("a" * 60, "a" * 40),
        ("///", "case"),
        ("plain-name_1.2", "plain-name_1.2"),
    ],
)
def test_sanitise_name(name: str, expected: str) -> None:
    assert sanitise_name(name) == expected


def test_case_uid_is_opaque_and_depends_on_plan_and_folder(case: SyntheticCase, tmp_path: Path) -> None:
    uid = case_uid(case.folder, case.plan_uid)
    assert len(uid) == 16 and all(c in "0123456789abcdef" for c in uid)
    assert uid != case_uid(case.folder, "1.2.3")
    assert uid != case_uid(tmp_path / "elsewhere", case.plan_uid)
    assert uid == case_uid(case.folder / ".." / case.folder.name, case.plan_uid)


def test_replan_gets_another_case_id(case: SyntheticCase) -> None:
    first = check(case.folder).case_id
    edit(case.plan, new_uid)
    assert check(case.folder).case_id != first


def test_patient_name_is_never_kept_or_shown(case: SyntheticCase) -> None:
    for result in (check(case.folder), check(case.folder, read_structure=True, body_contour_name="X")):
        console = Console(record=True, width=200)
        console.print(render_check(result))
        shown = console.export_text() + json.dumps(result.to_json()) + repr(result)
        for part in PATIENT_NAME.split("^"):
            assert part not in shown


# --- options -----------------------------------------------------------------------------


def test_options_from_config() -> None:
    config = parse_config(
        {
            "moqui": {"parameters": {"readstructure": "True", "BODYCONTOURNAME": "Body"}},
            "intake": {"setup_beam_names": ["Setup"], "allow_patient_id_mismatch": True},
        }
    )
    options = IntakeOptions.from_config(config, plan_uid="1.2.3")
    assert options == IntakeOptions(
        setup_beam_names=("Setup",),
        allow_patient_id_mismatch=True,
        read_structure=True,
        body_contour_name="Body",
        plan_uid="1.2.3",
        mc_dose_type="EFFECTIVE",
        engine_parameters=tuple(config.moqui.parameters.items()),
    )


def test_options_from_default_config() -> None:
    options = IntakeOptions.from_config(parse_config({}))
    assert options.read_structure is False
    assert options.body_contour_name == "External"
    assert [n.casefold() for n in options.setup_beam_names] == ["setup", "site setup"]


@pytest.mark.parametrize("value", [True, "true", "TRUE", 1])
def test_read_structure_values(value: object) -> None:
    config = parse_config({"moqui": {"parameters": {"ReadStructure": value}}})
    assert IntakeOptions.from_config(config).read_structure


# --- JSON and report ---------------------------------------------------------------------


def test_json_shape(case: SyntheticCase) -> None:
    summary = check(case.folder).to_json()
    assert set(summary) == {
        "valid",
        "errors",
        "warnings",
        "case_id",
        "plan",
        "beams",
        "ct",
        "structures",
        "tps_doses",
    }
    assert summary["valid"] is True
    assert set(summary["plan"]) == {"label", "sop_instance_uid", "fractions"}
    assert set(summary["beams"][0]) == {"number", "name", "gantry_angle", "layers", "spots", "meterset"}
    assert summary["beams"][0]["layers"] == 3 and summary["beams"][0]["spots"] == 27
    assert summary["ct"] == {"slices": 12, "rows": 24, "columns": 24, "spacing": [2.0, 2.0, 2.5]}
    assert summary["structures"] == ["External", "Target"]
    assert summary["tps_doses"] == [
        {"file": "RD_plan.dcm", "summation_type": "PLAN", "dose_type": "EFFECTIVE", "beam_number": None}
    ]
    json.dumps(summary)


def test_json_of_an_invalid_case_keeps_what_is_known(case: SyntheticCase) -> None:
    shutil.rmtree(case.folder / "ct")
    summary = check(case.folder).to_json()
    assert summary["valid"] is False
    assert summary["errors"] == [
        {"code": "CT_MISSING", "message": "no CT slices in the folder; add the planning CT series"}
    ]
    assert summary["ct"] is None
    assert len(summary["beams"]) == 2 and summary["case_id"]


def test_valid_report_shows_the_summary(case: SyntheticCase) -> None:
    console = Console(record=True, width=200)
    console.print(render_check(check(case.folder)))
    text = console.export_text()
    assert text.startswith("VALID Case_01-")
    for expected in ("SYNTH_PLAN", "B1", "B2", "24 x 24 x 12 voxels", "External, Target", "RD_plan.dcm"):
        assert expected in text
