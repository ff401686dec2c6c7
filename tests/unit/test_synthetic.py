"""The synthetic case builder: standard-conforming, cross-referenced and deterministic."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from mqi.testing.synthetic import build_case

DCIODVFY = shutil.which("dciodvfy")


def _errors(path: Path) -> list[str]:
    assert DCIODVFY is not None
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0 or "Error" in output, f"dciodvfy failed on {path}: {output}"
    return [line for line in output.splitlines() if line.startswith("Error")]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools)")
@pytest.mark.parametrize("unsigned_ct", [True, False])
def test_every_object_passes_dciodvfy(tmp_path: Path, unsigned_ct: bool) -> None:
    case = build_case(tmp_path, unsigned_ct=unsigned_ct, setup_beam=True, per_beam_doses=True)
    objects = [case.plan, case.rtstruct, *case.doses, case.ct[0], case.ct[-1]]
    for path in objects:
        assert _errors(path) == [], path.name


def test_same_arguments_give_identical_files(tmp_path: Path) -> None:
    first = build_case(tmp_path / "a", beams=3)
    second = build_case(tmp_path / "b", beams=3)
    for a, b in zip(
        [first.plan, first.rtstruct, *first.doses, *first.ct],
        [second.plan, second.rtstruct, *second.doses, *second.ct],
        strict=True,
    ):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_seed_changes_uids_but_not_geometry(tmp_path: Path) -> None:
    first = build_case(tmp_path / "a")
    second = build_case(tmp_path / "b", seed="other")
    assert first.plan_uid != second.plan_uid
    assert first.plan.stat().st_size == second.plan.stat().st_size


def test_objects_reference_each_other(tmp_path: Path) -> None:
    case = build_case(tmp_path, beams=3, layers=4, spots_per_layer=9)
    plan = pydicom.dcmread(case.plan)
    struct = pydicom.dcmread(case.rtstruct)
    dose = pydicom.dcmread(case.doses[0], stop_before_pixels=True)
    ct_uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in case.ct]

    assert plan.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.8"
    assert plan.FrameOfReferenceUID == case.frame_of_reference_uid == dose.FrameOfReferenceUID
    assert plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == struct.SOPInstanceUID
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == case.plan_uid
    series = struct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    referenced = [
        i.ReferencedSOPInstanceUID for i in series.RTReferencedSeriesSequence[0].ContourImageSequence
    ]
    assert referenced == ct_uids
    assert "External" in [roi.ROIName for roi in struct.StructureSetROISequence]


def test_plan_has_layer_pairs_and_metersets(tmp_path: Path) -> None:
    case = build_case(tmp_path, beams=2, layers=5, spots_per_layer=7)
    plan = pydicom.dcmread(case.plan)
    assert [b.GantryAngle for b in (s.IonControlPointSequence[0] for s in plan.IonBeamSequence)] == [0, 180]
    refs = plan.FractionGroupSequence[0].ReferencedBeamSequence
    for beam, ref in zip(plan.IonBeamSequence, refs, strict=True):
        points = beam.IonControlPointSequence
        assert len(points) == 10 == beam.NumberOfControlPoints
        assert all(cp.NumberOfScanSpotPositions == 7 for cp in points)
        total = sum(sum(cp.ScanSpotMetersetWeights) for cp in points)
        assert float(beam.FinalCumulativeMetersetWeight) == pytest.approx(total, rel=1e-5)
        assert float(ref.BeamMeterset) == pytest.approx(total, rel=1e-5)


def test_ct_is_a_water_cylinder_in_air(tmp_path: Path) -> None:
    for unsigned in (True, False):
        case = build_case(tmp_path / str(unsigned), unsigned_ct=unsigned, ct_shape=(32, 48, 5))
        ds = pydicom.dcmread(case.ct[2])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert ds.PixelRepresentation == (0 if unsigned else 1)
        assert hu.shape == (32, 48)
        assert hu[16, 24] == 0
        assert hu[0, 0] == -1000


def test_setup_beam_and_names(tmp_path: Path) -> None:
    case = build_case(tmp_path, beams=2, beam_names=["Left", "Right"], setup_beam=True)
    plan = pydicom.dcmread(case.plan)
    assert [b.BeamName for b in plan.IonBeamSequence] == ["Left", "Right", "SETUP"]
    assert plan.IonBeamSequence[2].TreatmentDeliveryType == "SETUP"
    with pytest.raises(ValueError, match="beam_names"):
        build_case(tmp_path / "bad", beams=3, beam_names=["one"])
