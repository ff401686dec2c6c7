"""Every intake check, each on a synthetic case broken in one way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mqi.intake import read_case
from mqi.testing.synthetic import SyntheticCase
from tests.unit.intake_fixtures import (  # noqa: F401 (fixtures)
    build_small,
    case_fixture,
    check,
    codes,
    edit,
    new_uid,
    pristine_fixture,
    warning_codes,
)

# --- a sound case ------------------------------------------------------------------------


def test_sound_case_is_valid(case: SyntheticCase) -> None:
    result = check(case.folder, read_structure=True)
    assert result.valid, result.errors
    assert result.warnings == []
    assert result.case is not None
    assert [b.number for b in result.case.beams] == [1, 2]
    assert result.case.ct.files == case.ct
    assert result.case.structure_set is not None
    assert result.case.plan.sop_instance_uid == case.plan_uid


# --- the plan ----------------------------------------------------------------------------


def test_no_plan(case: SyntheticCase) -> None:
    case.plan.unlink()
    assert codes(check(case.folder)) == ["NO_PLAN"]


def _second_plan(case: SyntheticCase) -> str:
    copy = case.folder / "RP_copy.dcm"
    shutil.copy(case.plan, copy)
    edit(copy, new_uid)
    return str(pydicom.dcmread(copy, stop_before_pixels=True).SOPInstanceUID)


def test_several_plans_ask_for_one(case: SyntheticCase) -> None:
    other = _second_plan(case)
    result = check(case.folder)
    assert codes(result) == ["MULTIPLE_PLANS"]
    assert "--plan" in result.errors[0].message
    assert case.plan_uid in result.errors[0].message and other in result.errors[0].message


def test_plan_option_picks_one_of_several(case: SyntheticCase) -> None:
    other = _second_plan(case)
    result = check(case.folder, plan_uid=other)
    assert result.valid, result.errors
    assert result.plan is not None and result.plan.sop_instance_uid == other
    # the TPS dose belongs to the other plan
    assert warning_codes(result) == ["OTHER_PLANS_IGNORED", "TPS_DOSE_OTHER_PLAN"]


def test_plan_option_with_an_unknown_uid(case: SyntheticCase) -> None:
    assert codes(check(case.folder, plan_uid="1.2.3.4")) == ["PLAN_NOT_FOUND"]


def test_photon_plan_instead_of_an_ion_plan(case: SyntheticCase) -> None:
    def to_photon(ds: Dataset) -> None:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        beam = Dataset()
        beam.BeamNumber = 1
        beam.BeamName = "photon"
        beam.RadiationType = "PHOTON"
        ds.BeamSequence = Sequence([beam])
        del ds.IonBeamSequence

    edit(case.plan, to_photon)
    result = check(case.folder)
    assert codes(result) == ["PHOTON_PLAN"]
    assert "RP_plan.dcm" in result.errors[0].message


def test_setup_beams_are_left_out(tmp_path: Path) -> None:
    built = build_small(tmp_path / "c", beams=3, beam_names=["B1", "Site setup", "B3"], setup_beam=True)
    result = check(built.folder, setup_beam_names=("SETUP", "site SETUP"))
    assert result.valid, result.errors
    assert [b.name for b in result.beams] == ["B1", "B3"]


def test_no_treatment_beams(case: SyntheticCase) -> None:
    def all_setup(ds: Dataset) -> None:
        for beam in ds.IonBeamSequence:
            beam.TreatmentDeliveryType = "SETUP"

    edit(case.plan, all_setup)
    assert codes(check(case.folder)) == ["NO_TREATMENT_BEAMS"]


def test_beam_without_spots(case: SyntheticCase) -> None:
    def no_spots(ds: Dataset) -> None:
        for point in ds.IonBeamSequence[0].IonControlPointSequence:
            point.NumberOfScanSpotPositions = 0
            del point.ScanSpotPositionMap
            del point.ScanSpotMetersetWeights

    edit(case.plan, no_spots)
    result = check(case.folder)
    assert codes(result) == ["BEAM_NO_SPOTS"]
    assert "beam 1 'B1'" in result.errors[0].message


def test_beam_with_zero_meterset(case: SyntheticCase) -> None:
    def zero(ds: Dataset) -> None:
        ds.FractionGroupSequence[0].ReferencedBeamSequence[1].BeamMeterset = 0

    edit(case.plan, zero)
    result = check(case.folder)
    assert codes(result) == ["BEAM_ZERO_METERSET"]
    assert "beam 2 'B2'" in result.errors[0].message


def test_odd_number_of_control_points(case: SyntheticCase) -> None:
    def drop_last(ds: Dataset) -> None:
        points = ds.IonBeamSequence[1].IonControlPointSequence
        del points[-1]
        ds.IonBeamSequence[1].NumberOfControlPoints = len(points)

    edit(case.plan, drop_last)
    assert codes(check(case.folder)) == ["CONTROL_POINTS_NOT_PAIRED"]


def test_energy_change_inside_a_layer_pair(case: SyntheticCase) -> None:
    def change_energy(ds: Dataset) -> None:
        ds.IonBeamSequence[0].IonControlPointSequence[3].NominalBeamEnergy = 99

    edit(case.plan, change_energy)
    result = check(case.folder)
    assert codes(result) == ["CONTROL_POINTS_NOT_PAIRED"]
    assert "control points 2 and 3" in result.errors[0].message


def test_spot_count_disagreeing_with_the_spot_arrays(case: SyntheticCase) -> None:
    def miscount(ds: Dataset) -> None:
        for point in ds.IonBeamSequence[0].IonControlPointSequence[:2]:
            point.NumberOfScanSpotPositions = 10

    edit(case.plan, miscount)
    assert codes(check(case.folder)) == ["SPOT_DATA_MISMATCH"]


def test_non_proton_beam(case: SyntheticCase) -> None:
    edit(case.plan, lambda ds: setattr(ds.IonBeamSequence[0], "RadiationType", "ION"))
    assert codes(check(case.folder)) == ["BEAM_NOT_PROTON"]


def test_plan_without_fraction_group(case: SyntheticCase) -> None:
    edit(case.plan, lambda ds: delattr(ds, "FractionGroupSequence"))
    result = check(case.folder)
    assert "PLAN_NO_FRACTION_GROUP" in codes(result)
    assert set(codes(result)) == {"PLAN_NO_FRACTION_GROUP", "BEAM_ZERO_METERSET"}


def test_beam_without_isocentre(case: SyntheticCase) -> None:
    edit(case.plan, lambda ds: delattr(ds.IonBeamSequence[1].IonControlPointSequence[0], "IsocenterPosition"))
    result = check(case.folder)
    assert codes(result) == ["BEAM_INVALID"]
    assert [b.number for b in result.beams] == [1]


def test_duplicate_beam_numbers(case: SyntheticCase) -> None:
    edit(case.plan, lambda ds: setattr(ds.IonBeamSequence[1], "BeamNumber", 1))
    assert "BEAM_NUMBER_DUPLICATE" in codes(check(case.folder))


def test_plan_without_frame_of_reference_is_a_warning(case: SyntheticCase) -> None:
    edit(case.plan, lambda ds: delattr(ds, "FrameOfReferenceUID"))
    result = check(case.folder)
    assert result.valid
    assert warning_codes(result) == ["PLAN_NO_FRAME_OF_REFERENCE"]


def test_isocentre_outside_the_ct_is_a_warning(case: SyntheticCase) -> None:
    def move(ds: Dataset) -> None:
        ds.IonBeamSequence[0].IonControlPointSequence[0].IsocenterPosition = [0, 0, 500]

    edit(case.plan, move)
    result = check(case.folder)
    assert result.valid
    assert warning_codes(result) == ["ISOCENTER_OUTSIDE_CT"]


# --- the CT ------------------------------------------------------------------------------


def test_ct_missing(case: SyntheticCase) -> None:
    shutil.rmtree(case.folder / "ct")
    assert codes(check(case.folder)) == ["CT_MISSING"]


def test_ct_from_two_series(case: SyntheticCase) -> None:
    other = pydicom.uid.generate_uid()
    for path in case.ct[:3]:
        edit(path, lambda ds: setattr(ds, "SeriesInstanceUID", other))
    result = check(case.folder)
    assert "CT_MIXED_SERIES" in codes(result)


def test_ct_of_another_frame_of_reference(case: SyntheticCase) -> None:
    other = pydicom.uid.generate_uid()
    for path in case.ct:
        edit(path, lambda ds: setattr(ds, "FrameOfReferenceUID", other))
    assert "CT_FRAME_OF_REFERENCE" in codes(check(case.folder))


def _move_slice(path: Path, dz: float) -> None:
    def shift(ds: Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + dz]

    edit(path, shift)


def test_ct_uneven_spacing(case: SyntheticCase) -> None:
    _move_slice(case.ct[5], 0.7)
    result = check(case.folder)
    assert codes(result) == ["CT_UNEVEN_SPACING"]


def test_ct_gap(case: SyntheticCase) -> None:
    case.ct[6].unlink()
    result = check(case.folder)
    assert "CT_GAP" in codes(result)
    assert "(1 slice)" in next(p.message for p in result.errors if p.code == "CT_GAP")


def test_ct_duplicate_position(case: SyntheticCase) -> None:
    copy = case.ct[4].with_name("CT_copy.dcm")
    shutil.copy(case.ct[4], copy)
    edit(copy, new_uid)
    result = check(case.folder)
    assert "CT_DUPLICATE_POSITION" in codes(result)


def test_ct_not_axial(case: SyntheticCase) -> None:
    for path in case.ct:
        edit(path, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]))
    assert "CT_NOT_AXIAL" in codes(check(case.folder))


def _narrower(ds: Dataset) -> None:
    """A complete slice of 12 columns (its pixel data cut to match)."""
    ds.PixelData = bytes(ds.PixelData)[: ds.Rows * 12 * 2]
    ds.Columns = 12


def test_ct_slices_of_different_size(case: SyntheticCase) -> None:
    edit(case.ct[3], _narrower)
    result = check(case.folder)
    assert codes(result) == ["CT_SIZE_MISMATCH"]
    assert "CT_003.dcm" in result.errors[0].message


def test_ct_pixel_spacing_differs(case: SyntheticCase) -> None:
    edit(case.ct[2], lambda ds: setattr(ds, "PixelSpacing", [1.5, 1.5]))
    assert codes(check(case.folder)) == ["CT_PIXEL_SPACING_MISMATCH"]


def test_ct_slice_without_position(case: SyntheticCase) -> None:
    edit(case.ct[0], lambda ds: delattr(ds, "ImagePositionPatient"))
    result = check(case.folder)
    assert codes(result)[0] == "CT_ATTRIBUTE_MISSING"
    assert "ImagePositionPatient" in result.errors[0].message


def test_ct_with_8_bit_pixels(case: SyntheticCase) -> None:
    edit(case.ct[1], lambda ds: setattr(ds, "BitsAllocated", 8))
    assert codes(check(case.folder)) == ["CT_PIXEL_FORMAT"]


def test_ct_slice_thickness_unlike_the_spacing_is_a_warning(case: SyntheticCase) -> None:
    for path in case.ct:
        edit(path, lambda ds: setattr(ds, "SliceThickness", 3))
    result = check(case.folder)
    assert result.valid
    assert warning_codes(result) == ["CT_SLICE_THICKNESS"]


def test_signed_ct_is_read_as_signed(tmp_path: Path) -> None:
    built = build_small(tmp_path / "signed", unsigned_ct=False)
    result = check(built.folder)
    assert result.case is not None
    assert result.case.ct.pixel_representation == 1
    assert result.case.ct.rescale_intercept == 0


# --- the structure set -------------------------------------------------------------------


def test_rtstruct_missing_when_structures_are_read(case: SyntheticCase) -> None:
    case.rtstruct.unlink()
    assert codes(check(case.folder, read_structure=True)) == ["RTSTRUCT_MISSING"]
    assert check(case.folder, read_structure=False).valid


def test_rtstruct_of_another_ct(case: SyntheticCase) -> None:
    def other_series(ds: Dataset) -> None:
        study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        study.RTReferencedSeriesSequence[0].SeriesInstanceUID = pydicom.uid.generate_uid()

    edit(case.rtstruct, other_series)
    assert codes(check(case.folder, read_structure=True)) == ["RTSTRUCT_NOT_REFERENCING_CT"]
    assert warning_codes(check(case.folder, read_structure=False)) == ["RTSTRUCT_NOT_REFERENCING_CT"]


def test_rtstruct_referencing_missing_ct_images(case: SyntheticCase) -> None:
    def extra_image(ds: Dataset) -> None:
        study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        images = study.RTReferencedSeriesSequence[0].ContourImageSequence
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
        images.append(item)

    edit(case.rtstruct, extra_image)
    result = check(case.folder, read_structure=True)
    assert codes(result) == ["RTSTRUCT_NOT_REFERENCING_CT"]
    assert "1 CT images that are not in the folder" in result.errors[0].message


def test_body_contour_missing(case: SyntheticCase) -> None:
    edit(case.rtstruct, lambda ds: setattr(ds.StructureSetROISequence[0], "ROIName", "EXTERNAL"))
    result = check(case.folder, read_structure=True)
    assert codes(result) == ["BODY_CONTOUR_MISSING"]
    assert "'EXTERNAL'" in result.errors[0].message  # the near miss is named
    assert check(case.folder, read_structure=True, body_contour_name="EXTERNAL").valid


def test_several_structure_sets_pick_the_plans(case: SyntheticCase) -> None:
    copy = case.folder / "RS_copy.dcm"
    shutil.copy(case.rtstruct, copy)
    edit(copy, new_uid)
    result = check(case.folder, read_structure=True)
    assert result.valid, result.errors
    assert result.structure_set is not None and result.structure_set.path == case.rtstruct


def test_several_structure_sets_none_named_by_the_plan(case: SyntheticCase) -> None:
    copy = case.folder / "RS_copy.dcm"
    shutil.copy(case.rtstruct, copy)
    edit(copy, new_uid)
    edit(case.plan, lambda ds: delattr(ds, "ReferencedStructureSetSequence"))
    assert codes(check(case.folder, read_structure=True)) == ["MULTIPLE_RTSTRUCTS"]


# --- across objects ----------------------------------------------------------------------


def test_patient_id_mismatch(case: SyntheticCase) -> None:
    edit(case.plan, lambda ds: setattr(ds, "PatientID", "SOMEONE-ELSE"))
    strict = check(case.folder)
    assert codes(strict) == ["PATIENT_ID_MISMATCH", "PATIENT_ID_MISMATCH"]
    assert all("SOMEONE-ELSE" not in p.message for p in strict.errors)
    allowed = check(case.folder, allow_patient_id_mismatch=True)
    assert allowed.valid
    assert warning_codes(allowed) == ["PATIENT_ID_MISMATCH", "PATIENT_ID_MISMATCH"]


def test_dose_of_another_plan_is_left_out(case: SyntheticCase) -> None:
    def other_plan(ds: Dataset) -> None:
        ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = pydicom.uid.generate_uid()

    edit(case.doses[0], other_plan)
    result = check(case.folder)
    assert result.valid
    assert result.tps_doses == []
    assert warning_codes(result) == ["TPS_DOSE_OTHER_PLAN"]


def test_per_beam_doses(tmp_path: Path) -> None:
    built = build_small(tmp_path / "doses", per_beam_doses=True)
    result = check(built.folder)
    assert [(d.summation_type, d.beam_number) for d in result.tps_doses] == [
        ("PLAN", None),
        ("BEAM", 1),
        ("BEAM", 2),
    ]


def test_other_dicom_objects_are_ignored_with_a_warning(case: SyntheticCase) -> None:
    stray = case.folder / "MR.dcm"
    shutil.copy(case.ct[0], stray)

    def to_mr(ds: Dataset) -> None:
        new_uid(ds)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID

    edit(stray, to_mr)
    result = check(case.folder)
    assert result.valid
    assert warning_codes(result) == ["OTHER_DICOM_IGNORED"]
    assert "MR Image Storage" in result.warnings[0].message


def test_delivery_logs_folder(case: SyntheticCase) -> None:
    logs = case.folder / "logs" / "beam1"
    logs.mkdir(parents=True)
    (logs / "layer_000.csv").write_text("x,y,mu\n0,0,1\n")
    (case.folder / "logs" / "beam2.csv").write_text("x,y,mu\n")
    result = check(case.folder)
    assert result.case is not None
    assert result.case.log_dir == case.folder / "logs"


def test_no_delivery_logs(case: SyntheticCase) -> None:
    result = check(case.folder)
    assert result.case is not None and result.case.log_dir is None


# --- files -------------------------------------------------------------------------------


def test_truncated_ct_slice(case: SyntheticCase) -> None:
    data = case.ct[7].read_bytes()
    case.ct[7].write_bytes(data[: len(data) - 100])
    result = check(case.folder)
    assert codes(result)[0] == "DICOM_TRUNCATED"
    assert "ct/CT_007.dcm" in result.errors[0].message
    assert "CT_GAP" in codes(result)  # the unusable slice leaves a hole


def test_ct_slice_cut_before_its_pixels(case: SyntheticCase) -> None:
    data = case.ct[7].read_bytes()
    case.ct[7].write_bytes(data[:600])
    assert codes(check(case.folder))[0] == "DICOM_TRUNCATED"


def test_truncated_plan(case: SyntheticCase) -> None:
    data = case.plan.read_bytes()
    case.plan.write_bytes(data[: len(data) * 2 // 3])
    result = check(case.folder)
    assert codes(result) == ["DICOM_TRUNCATED", "NO_PLAN"]
    assert "RP_plan.dcm" in result.errors[0].message


def test_corrupt_dcm_file(case: SyntheticCase) -> None:
    (case.folder / "broken.dcm").write_bytes(b"this is not DICOM at all" * 20)
    result = check(case.folder)
    assert codes(result) == ["DICOM_UNREADABLE"]
    assert "broken.dcm" in result.errors[0].message


def test_non_dicom_files_are_ignored(case: SyntheticCase) -> None:
    (case.folder / "README.txt").write_text("notes about the case")
    (case.folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert check(case.folder).valid


def test_partial_copy_is_skipped_with_a_warning(case: SyntheticCase) -> None:
    (case.folder / "CT_999.dcm.part").write_bytes(b"partial")
    result = check(case.folder)
    assert result.valid
    assert warning_codes(result) == ["PARTIAL_FILE"]


def test_case_found_in_nested_folders_whatever_the_names(case: SyntheticCase) -> None:
    nested = case.folder / "export" / "deeper"
    nested.mkdir(parents=True)
    case.plan.rename(nested / "anything.bin")
    case.rtstruct.rename(nested / "no_extension")
    result = check(case.folder)
    assert result.valid, result.errors
    assert result.plan is not None and result.plan.path == nested / "anything.bin"


def test_read_case_accepts_default_options(case: SyntheticCase) -> None:
    assert read_case(case.folder).valid
