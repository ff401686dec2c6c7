"""Post-processing of hand-built bundles after stand-in runs: RT Doses, plan sum, summary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mqi.bundle import EXIT_CODE_NAME, sha256_file, write_manifest
from mqi.post import postprocess_bundle
from tests.unit.engine_fixtures import (
    Bundle,
    build_bundle,
    dciodvfy_errors,
    needs_aptg,
    needs_dciodvfy,
    read_output,
    replace_parameter,
    run_all_beams,
    run_engine,
)

PATIENT_ID = "MQI-SYNTH-001"
PATIENT_NAME = "Synthetic^Phantom"


def gy(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)


def post(bundle: Bundle, **options: object) -> dict:
    return postprocess_bundle(bundle.path, **options)  # type: ignore[arg-type]


def beam(summary: dict, number: int) -> dict:
    (found,) = [item for item in summary["beams"] if item["number"] == number]
    return found


def results(bundle: Bundle) -> list[str]:
    return sorted(path.name for path in (bundle.path / "results").iterdir())


@pytest.fixture(scope="module")
def done_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, dict]:
    """Two beams through the real stand-in process and ``python -m mqi.post``."""
    bundle = build_bundle(tmp_path_factory.mktemp("done") / "bundle")
    run_all_beams(bundle)
    ran = subprocess.run(
        [sys.executable, "-m", "mqi.post", "."], cwd=bundle.path, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((bundle.path / "results" / "summary.json").read_text())
    return bundle, {"summary": summary, "stdout": ran.stdout}


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    made = build_bundle(tmp_path / "bundle")
    run_all_beams(made, process=False)
    return made


# --- a completed case -----------------------------------------------------------------
def test_summary_of_a_completed_case(done_bundle) -> None:
    bundle, ran = done_bundle
    summary = ran["summary"]
    assert summary["format"] == 1
    assert summary["case_uid"] == bundle.manifest.case_uid
    assert summary["plan_status"] == "completed" and summary["plan_file"] == "RD.plan.dcm"
    assert summary["dose_type"] == "EFFECTIVE"
    assert summary["tps_doses"] == []
    assert [item["number"] for item in summary["beams"]] == [1, 2]
    for item in summary["beams"]:
        assert item["status"] == "completed" and item["reason"] is None
        assert item["exit_code"] == 0 and item["engine_ms"] >= 0
        assert item["file"] == f"RD.beam{item['number']}.dcm"
        raw = read_output(bundle, item["number"])
        assert item["max_dose_gy"] == pytest.approx(raw.max(), rel=1e-12)
        assert item["mean_dose_gy"] == pytest.approx(raw.mean(), rel=1e-9)
    assert set(summary["files"]) == {"RD.beam1.dcm", "RD.beam2.dcm", "RD.plan.dcm", "qa.json"}
    for name, digest in summary["files"].items():
        assert sha256_file(bundle.path / "results" / name) == digest
    assert results(bundle) == ["RD.beam1.dcm", "RD.beam2.dcm", "RD.plan.dcm", "qa.json", "summary.json"]


def test_log_has_one_line_per_beam_and_no_patient_data(done_bundle) -> None:
    bundle, ran = done_bundle
    lines = ran["stdout"].splitlines()
    assert lines[0].startswith("beam 1: completed, max ")
    assert lines[1].startswith("beam 2: completed, max ")
    assert lines[2] == "plan: completed -> RD.plan.dcm"
    summary_text = (bundle.path / "results" / "summary.json").read_text()
    for text in (ran["stdout"], summary_text):
        assert PATIENT_ID not in text and "Synthetic" not in text and "Phantom" not in text
        assert "B1" not in text and "B2" not in text  # nor beam names


def test_rt_dose_reads_back_as_the_engine_output(done_bundle) -> None:
    bundle, _ = done_bundle
    for number in (1, 2):
        path = bundle.path / "results" / f"RD.beam{number}.dcm"
        raw = read_output(bundle, number)
        scaling = float(pydicom.dcmread(path, stop_before_pixels=True).DoseGridScaling)
        assert scaling == pytest.approx(raw.max() / (2**32 - 1), rel=1e-9)
        assert np.abs(gy(path) - raw).max() <= 0.5 * scaling * (1 + 1e-6)


def test_plan_sum_is_the_sum_of_the_beams(done_bundle) -> None:
    bundle, _ = done_bundle
    plan = gy(bundle.path / "results" / "RD.plan.dcm")
    beams = gy(bundle.path / "results" / "RD.beam1.dcm") + gy(bundle.path / "results" / "RD.beam2.dcm")
    assert np.abs(plan - beams).max() <= 1e-6 * beams.max()
    raw_sum = read_output(bundle, 1) + read_output(bundle, 2)
    assert np.abs(plan - raw_sum).max() <= 1e-6 * raw_sum.max()


def test_rt_dose_geometry_is_the_ct_grid(done_bundle) -> None:
    bundle, _ = done_bundle
    grid = bundle.manifest.grid
    ct = pydicom.dcmread(sorted((bundle.path / "input").glob("CT*.dcm"))[0], stop_before_pixels=True)
    for name in ("RD.beam1.dcm", "RD.plan.dcm"):
        ds = pydicom.dcmread(bundle.path / "results" / name)
        assert (ds.Rows, ds.Columns, ds.NumberOfFrames) == (grid.rows, grid.columns, grid.slices)
        assert [float(v) for v in ds.PixelSpacing] == [grid.spacing[1], grid.spacing[0]]
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(grid.origin)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        offsets = [float(v) for v in ds.GridFrameOffsetVector]
        assert offsets == pytest.approx([k * grid.spacing[2] for k in range(grid.slices)])
        assert ds.FrameIncrementPointer == 0x3004000C
        assert ds.FrameOfReferenceUID == grid.frame_of_reference_uid
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (32, 32, 31, 0)
        assert ds.DoseUnits == "GY" and ds.DoseType == "EFFECTIVE" and ds.Modality == "RTDOSE"
        assert ds.PatientID == ct.PatientID and ds.PatientName == ct.PatientName
        assert ds.StudyInstanceUID == ct.StudyInstanceUID


def test_pixels_are_where_the_engine_put_them(done_bundle) -> None:
    bundle, _ = done_bundle
    ds = pydicom.dcmread(bundle.path / "results" / "RD.beam1.dcm")
    raw = read_output(bundle, 1)
    k, j, i = np.unravel_index(np.argmax(raw), raw.shape)
    assert np.unravel_index(np.argmax(ds.pixel_array), ds.pixel_array.shape) == (k, j, i)


def test_references_and_uids(done_bundle) -> None:
    bundle, _ = done_bundle
    files = {
        name: pydicom.dcmread(bundle.path / "results" / name)
        for name in ("RD.beam1.dcm", "RD.beam2.dcm", "RD.plan.dcm")
    }
    assert len({ds.SeriesInstanceUID for ds in files.values()}) == 1
    assert len({ds.SOPInstanceUID for ds in files.values()}) == 3
    for name, ds in files.items():
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        (ref,) = ds.ReferencedRTPlanSequence
        assert ref.ReferencedSOPInstanceUID == bundle.manifest.plan_uid
        assert ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.481.8"
        if name == "RD.plan.dcm":
            assert ds.DoseSummationType == "PLAN" and "ReferencedFractionGroupSequence" not in ref
        else:
            assert ds.DoseSummationType == "BEAM"
            (group,) = ref.ReferencedFractionGroupSequence
            assert group.ReferencedFractionGroupNumber == 1
            assert [b.ReferencedBeamNumber for b in group.ReferencedBeamSequence] == [int(name[7])]


@needs_dciodvfy
def test_every_rt_dose_passes_dciodvfy(done_bundle, tmp_path: Path) -> None:
    bundle, _ = done_bundle
    for name in ("RD.beam1.dcm", "RD.beam2.dcm", "RD.plan.dcm"):
        assert dciodvfy_errors(bundle.path / "results" / name, tmp_path) == [], name


def test_running_again_gives_identical_files(bundle: Bundle) -> None:
    first = post(bundle)
    again = post(bundle)
    assert again == first
    assert first["files"]["RD.plan.dcm"] == sha256_file(bundle.path / "results" / "RD.plan.dcm")


def test_small_chunks_give_the_same_files(bundle: Bundle) -> None:
    whole = post(bundle)
    frame_bytes = bundle.manifest.grid.rows * bundle.manifest.grid.columns * 8
    chunked = post(bundle, chunk_bytes=5 * frame_bytes)  # 12 frames: chunks of 5, 5, 2
    assert chunked == whole


def test_mhd_output_gives_the_same_doses(tmp_path: Path) -> None:
    raw_bundle = build_bundle(tmp_path / "raw")
    mhd_bundle = build_bundle(tmp_path / "mhd", output_format="mhd")
    for made in (raw_bundle, mhd_bundle):
        run_all_beams(made, process=False)
    raw_summary, mhd_summary = post(raw_bundle), post(mhd_bundle)
    assert mhd_summary["plan_status"] == "completed"
    # qa.json and the report carry their creation time and duration; the doses must be equal.
    doses = {name for name in raw_summary["files"] if name.endswith(".dcm")}
    assert len(doses) >= 2
    assert {name: mhd_summary["files"][name] for name in doses} == {
        name: raw_summary["files"][name] for name in doses
    }
    assert mhd_summary["qa"]["verdict"] == raw_summary["qa"]["verdict"]


def test_physical_dose_type_from_the_manifest(tmp_path: Path) -> None:
    made = build_bundle(tmp_path / "b", dose_type="PHYSICAL")
    run_all_beams(made, process=False)
    assert post(made)["dose_type"] == "PHYSICAL"
    assert pydicom.dcmread(made.path / "results" / "RD.plan.dcm").DoseType == "PHYSICAL"


def test_tps_doses_are_listed(tmp_path: Path) -> None:
    made = build_bundle(tmp_path / "b")
    manifest = made.manifest.model_copy(update={"tps_doses": ["tps/RD_plan.dcm"]})
    write_manifest(made.path, manifest)
    run_all_beams(made, process=False)
    assert post(made)["tps_doses"] == ["tps/RD_plan.dcm"]


# --- failed beams ------------------------------------------------------------------
def assert_beam_failed(summary: dict, number: int, reason: str) -> dict:
    item = beam(summary, number)
    assert item["status"] == "failed"
    assert item["reason"] == reason
    assert item["file"] is None and item["sha256"] is None and item["max_dose_gy"] is None
    assert summary["plan_status"] == "failed" and summary["plan_file"] is None
    assert "RD.plan.dcm" not in summary["files"]
    return item


def test_engine_abort_is_reported_with_its_message(bundle: Bundle) -> None:
    replace_parameter(bundle, 2, "BeamNumbers", "9")
    run_engine(bundle, 2)
    summary = post(bundle)
    item = assert_beam_failed(summary, 2, "engine exit 134: Invalid beam number.")
    assert item["exit_code"] == 134
    assert beam(summary, 1)["status"] == "completed"
    assert results(bundle) == ["RD.beam1.dcm", "qa.json", "summary.json"]


def test_segfault(bundle: Bundle) -> None:
    run_engine(bundle, 2, "--fail-beams", "2", "--fail-mode", "139")
    assert_beam_failed(post(bundle), 2, "engine exit 139 (segmentation fault)")


def test_cuda_error(bundle: Bundle) -> None:
    run_engine(bundle, 2, "--fail-beams", "2", "--fail-mode", "255")
    item = assert_beam_failed(
        post(bundle),
        2,
        "engine exit 255: CUDA error: mqi::upload_node cudaErrorMemoryAllocation out of memory",
    )
    assert item["exit_code"] == 255


def test_exit_zero_without_output(bundle: Bundle) -> None:
    run_engine(bundle, 1, "--fail-beams", "1", "--fail-mode", "no-output")
    item = assert_beam_failed(
        post(bundle), 1, "no output file (engine: Cannot write :beams/1/output/B1_0_Dose.raw)"
    )
    assert item["exit_code"] == 0 and item["engine_ms"] is not None


def test_task_that_never_finished(bundle: Bundle) -> None:
    (bundle.beam_dir(2) / EXIT_CODE_NAME).unlink()
    item = assert_beam_failed(
        post(bundle), 2, "no exit code: the simulation task never ran or did not finish"
    )
    assert item["exit_code"] is None


def test_output_of_the_wrong_size(bundle: Bundle) -> None:
    path = bundle.beam_dir(1) / "output" / "B1_0_Dose.raw"
    expected = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(expected - 8 * 7)
    assert_beam_failed(post(bundle), 1, f"output has {expected - 56} bytes, expected {expected}")


def test_output_with_nan(bundle: Bundle) -> None:
    path = bundle.beam_dir(1) / "output" / "B1_0_Dose.raw"
    values = np.fromfile(path, dtype="<f8")
    values[len(values) // 3] = np.nan
    values.tofile(path)
    assert_beam_failed(post(bundle), 1, "output contains NaN")


def test_output_with_infinite_values(bundle: Bundle) -> None:
    path = bundle.beam_dir(2) / "output" / "B2_0_Dose.raw"
    values = np.fromfile(path, dtype="<f8")
    values[-1] = np.inf
    values.tofile(path)
    assert_beam_failed(post(bundle), 2, "output contains infinite values")


def test_negative_dose(bundle: Bundle) -> None:
    replace_parameter(bundle, 2, "ParticlesPerHistory", "-1")
    run_engine(bundle, 2, process=False)
    summary = post(bundle)
    reason = beam(summary, 2)["reason"]
    assert reason.startswith("output contains negative values (min -")
    assert_beam_failed(summary, 2, reason)


def test_two_output_files_are_ambiguous(bundle: Bundle) -> None:
    out = bundle.beam_dir(1) / "output"
    shutil.copy(out / "B1_0_Dose.raw", out / "old_1_Dose.raw")
    assert_beam_failed(post(bundle), 1, "2 output files match *_Dose.raw: B1_0_Dose.raw, old_1_Dose.raw")


def test_mhd_header_for_another_grid(tmp_path: Path) -> None:
    made = build_bundle(tmp_path / "b", output_format="mhd")
    run_all_beams(made, process=False)
    header = made.beam_dir(1) / "output" / "B1_0_Dose.mhd"
    header.write_text(header.read_text().replace("DimSize = 20 24 12", "DimSize = 20 24 11"))
    assert_beam_failed(post(made), 1, "output grid 20x24x11 does not match the CT grid 20x24x12")


def test_a_scorer_other_than_dose_is_not_written_as_dose(tmp_path: Path) -> None:
    made = build_bundle(tmp_path / "b", scorer="LETd")
    run_all_beams(made, process=False)
    assert_beam_failed(post(made), 1, "scorer LETd is not a dose; an RT Dose needs Scorer Dose")


def test_a_failure_removes_stale_results(bundle: Bundle) -> None:
    assert post(bundle)["plan_status"] == "completed"
    run_engine(bundle, 2, "--fail-beams", "2", "--fail-mode", "139")
    summary = post(bundle)
    assert summary["plan_status"] == "failed"
    assert results(bundle) == ["RD.beam1.dcm", "qa.json", "summary.json"]


def test_post_exits_zero_when_beams_failed(bundle: Bundle) -> None:
    run_engine(bundle, 1, "--fail-beams", "1", "--fail-mode", "134")
    ran = subprocess.run([sys.executable, "-m", "mqi.post", str(bundle.path)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[0].startswith("beam 1: failed: engine exit 134: ")
    assert "plan: failed (not every beam completed)" in ran.stdout.splitlines()


def test_post_without_a_manifest_exits_2(tmp_path: Path) -> None:
    ran = subprocess.run([sys.executable, "-m", "mqi.post", str(tmp_path)], capture_output=True, text=True)
    assert ran.returncode == 2
    assert ran.stderr.strip() == f"mqi.post: {tmp_path} is not a bundle: no manifest.json"


# --- the real case -------------------------------------------------------------------
@needs_aptg
def test_aptg_case_end_to_end(tmp_path: Path) -> None:
    made = build_bundle(tmp_path / "aptg", source="aptg")
    run_all_beams(made, process=False)
    summary = post(made)
    assert summary["plan_status"] == "completed"
    assert [item["number"] for item in summary["beams"]] == [1, 2]
    assert not any("name" in item for item in summary["beams"])  # beam names stay off the cluster
    plan = gy(made.path / "results" / "RD.plan.dcm")
    assert plan.shape == (61, 128, 128)
    beams = gy(made.path / "results" / "RD.beam1.dcm") + gy(made.path / "results" / "RD.beam2.dcm")
    assert np.abs(plan - beams).max() <= 1e-6 * plan.max()
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(made.path / "results" / "RD.plan.dcm", tmp_path) == []
