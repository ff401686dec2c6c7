"""The MOQUI stand-in run as a real process: files, formats, exit codes and messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mqi.testing.standin import range_mm
from tests.unit.engine_fixtures import (
    Bundle,
    build_bundle,
    edit_plan,
    needs_aptg,
    read_output,
    replace_parameter,
    run_engine,
    run_standin,
    run_standin_here,
)

TERMINATE = "terminate called after throwing an instance of 'std::runtime_error'"


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return build_bundle(tmp_path / "bundle")


def beam1(bundle: Bundle, *options: str) -> subprocess.CompletedProcess[str]:
    """Beam 1 in a real process: exit codes and stderr as a job script sees them."""
    return run_standin(bundle.path, *options, "beams/1/moqui_tps.in")


def beam1_here(bundle: Bundle, *options: str) -> subprocess.CompletedProcess[str]:
    """Beam 1 run in this process, for what the output looks like."""
    return run_standin_here(bundle.path, *options, "beams/1/moqui_tps.in")


def assert_aborted(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 134, done.stderr
    assert done.stderr.splitlines() == [TERMINATE, f"  what():  {message}"]


def outputs(bundle: Bundle, number: int = 1) -> list[str]:
    out = bundle.beam_dir(number) / "output"
    return sorted(path.name for path in out.iterdir()) if out.is_dir() else []


# --- success ---------------------------------------------------------------------------
def test_writes_float64_dose_named_after_the_beam(bundle: Bundle) -> None:
    done = beam1_here(bundle)
    assert done.returncode == 0, done.stderr
    assert outputs(bundle) == ["B1_0_Dose.raw"]
    path = bundle.beam_dir(1) / "output" / "B1_0_Dose.raw"
    grid = bundle.manifest.grid
    assert path.stat().st_size == grid.columns * grid.rows * grid.slices * 8
    dose = read_output(bundle, 1)
    assert np.isfinite(dose).all() and dose.min() >= 0 and dose.max() > 0


def test_progress_lines_like_moqui(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "MaxHistoriesPerBatch", "10000")
    lines = beam1(bundle).stdout.splitlines()
    upload = lines[0].split()
    assert upload[0] == "Upload" and upload[1] == "10000"
    assert " ".join(upload[2:5]) == "histories per batch," and upload[6:] == ["batches", "expected"]
    batches = int(upload[5])
    assert batches > 1
    assert lines[1:-1] == ["Generating particles..."] * batches
    head, _, tail = lines[-1].rpartition(" ")
    assert tail == "milli-seconds"
    assert head.startswith("Time taken by MC engine: ") and float(head.split(": ")[1]) >= 0


def test_identical_input_gives_identical_bytes(bundle: Bundle) -> None:
    assert beam1_here(bundle).returncode == 0
    first = read_output(bundle, 1).tobytes()
    shutil.rmtree(bundle.beam_dir(1) / "output")
    assert beam1_here(bundle).returncode == 0
    assert read_output(bundle, 1).tobytes() == first


def test_another_seed_gives_another_dose(bundle: Bundle) -> None:
    assert beam1_here(bundle).returncode == 0
    first = read_output(bundle, 1)
    replace_parameter(bundle, 1, "RandomSeed", "99")
    assert beam1_here(bundle).returncode == 0
    second = read_output(bundle, 1)
    assert not np.array_equal(first, second)
    assert np.allclose(first, second, rtol=0.07)


def test_default_parameter_file_is_moqui_tps_in_in_the_working_directory(bundle: Bundle) -> None:
    shutil.copy(bundle.beam_dir(1) / "moqui_tps.in", bundle.path / "moqui_tps.in")
    done = run_standin(bundle.path)
    assert done.returncode == 0, done.stderr
    assert outputs(bundle) == ["B1_0_Dose.raw"]


def test_output_scales_with_rbe_particles_and_fractions(bundle: Bundle) -> None:
    assert beam1_here(bundle).returncode == 0
    base = read_output(bundle, 1)
    replace_parameter(bundle, 1, "RBE", "2.2")
    replace_parameter(bundle, 1, "ParticlesPerHistory", "3")
    replace_parameter(bundle, 1, "NumberOfFraction", "5")
    assert beam1_here(bundle).returncode == 0
    assert np.allclose(read_output(bundle, 1), base * 2 * 3 * 5, rtol=1e-12)


def test_zero_fractions_means_the_plans_fractions(bundle: Bundle) -> None:
    edit_plan(bundle, lambda plan: setattr(plan.FractionGroupSequence[0], "NumberOfFractionsPlanned", 4))
    replace_parameter(bundle, 1, "NumberOfFraction", "1")
    assert beam1_here(bundle).returncode == 0
    one = read_output(bundle, 1)
    replace_parameter(bundle, 1, "NumberOfFraction", "0")
    assert beam1_here(bundle).returncode == 0
    assert np.allclose(read_output(bundle, 1), one * 4, rtol=1e-12)


def test_beam_two_travels_the_other_way(bundle: Bundle) -> None:
    run_engine(bundle, 1, process=False)
    run_engine(bundle, 2, process=False)
    # synthetic beams: gantry 0 (toward +y, rows) and gantry 180 (toward -y)
    first, second = read_output(bundle, 1), read_output(bundle, 2)
    rows = bundle.shape[1]
    profile1, profile2 = first.sum(axis=(0, 2)), second.sum(axis=(0, 2))
    assert profile1[rows - 1] > profile1[0]
    assert profile2[0] > profile2[rows - 1]


def test_depth_of_the_peak_is_the_range_of_the_energy(tmp_path: Path) -> None:
    # one 150 MeV layer, gantry 0: the beam enters at the first row and travels along +y
    bundle = build_bundle(tmp_path / "b", beams=1, layers=1, ct_shape=(110, 20, 8), spacing=(2.0, 2.0, 2.0))
    assert beam1_here(bundle).returncode == 0
    profile = read_output(bundle, 1).sum(axis=(0, 2))
    dy = bundle.manifest.grid.spacing[1]
    depth_of_peak = int(np.argmax(profile)) * dy  # depth 0 at the first row's voxel centres
    assert abs(depth_of_peak - range_mm(150.0)) <= 4.0
    assert profile[-1] < 0.05 * profile.max()  # nothing beyond the range


def test_mhd_output_has_a_header_and_the_same_values(bundle: Bundle) -> None:
    assert beam1_here(bundle).returncode == 0
    raw = read_output(bundle, 1)
    replace_parameter(bundle, 1, "OutputFormat", "mhd")
    assert beam1_here(bundle).returncode == 0
    assert outputs(bundle) == ["B1_0_Dose.mhd", "B1_0_Dose.raw"]
    header = (bundle.beam_dir(1) / "output" / "B1_0_Dose.mhd").read_text()
    fields = dict(line.split(" = ", 1) for line in header.splitlines())
    grid = bundle.manifest.grid
    assert fields["NDims"] == "3"
    assert fields["DimSize"] == f"{grid.columns} {grid.rows} {grid.slices}"
    assert [float(v) for v in fields["ElementSpacing"].split()] == list(grid.spacing)
    assert [float(v) for v in fields["Offset"].split()] == pytest.approx(grid.origin)
    assert fields["ElementType"] == "MET_DOUBLE"
    assert fields["ElementDataFile"] == "B1_0_Dose.raw"
    assert np.array_equal(read_output(bundle, 1), raw)


def test_uppercase_mhd_is_not_mhd(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "OutputFormat", "MHD")
    assert beam1_here(bundle).returncode == 0
    assert outputs(bundle) == ["B1_0_Dose.raw"]


def test_keys_are_read_case_insensitively_first_one_winning(bundle: Bundle) -> None:
    path = bundle.beam_dir(1) / "moqui_tps.in"
    path.write_text("outputdir beams/1/first\n" + path.read_text() + "OUTPUTDIR beams/1/last\n")
    assert beam1_here(bundle).returncode == 0
    assert (bundle.beam_dir(1) / "first" / "B1_0_Dose.raw").is_file()
    assert not (bundle.beam_dir(1) / "output").exists()


def test_absolute_dicom_dir(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "UseAbsolutePath", "true")
    replace_parameter(bundle, 1, "DicomDir", str(bundle.path / "input"))
    replace_parameter(bundle, 1, "ParentDir", "/nonexistent")
    assert beam1_here(bundle).returncode == 0


def test_scoring_index_counts_range_shifters_and_blocks(bundle: Bundle) -> None:
    def add_devices(plan: pydicom.Dataset) -> None:
        plan.IonBeamSequence[0].NumberOfRangeShifters = 1
        plan.IonBeamSequence[0].NumberOfBlocks = 1

    edit_plan(bundle, add_devices)
    assert beam1_here(bundle).returncode == 0
    assert outputs(bundle) == ["B1_2_Dose.raw"]


def test_beam_name_is_taken_by_position(bundle: Bundle) -> None:
    def swap_numbers(plan: pydicom.Dataset) -> None:
        first, second = plan.IonBeamSequence
        first.BeamNumber, second.BeamNumber = 2, 1

    edit_plan(bundle, swap_numbers)
    run_engine(bundle, 1, process=False)
    assert outputs(bundle, 1) == ["B1_0_Dose.raw"]  # beam number 1 is item 2, named by item 1


def test_beam_number_past_the_sequence_crashes(bundle: Bundle) -> None:
    edit_plan(bundle, lambda plan: setattr(plan.IonBeamSequence[1], "BeamNumber", 7))
    replace_parameter(bundle, 1, "BeamNumbers", "7")
    done = beam1(bundle)
    assert done.returncode == 139 and done.stderr == ""


def test_only_even_control_points_are_read(bundle: Bundle) -> None:
    assert beam1_here(bundle).returncode == 0
    before = read_output(bundle, 1)

    def weigh_odd_points(plan: pydicom.Dataset) -> None:
        for index, cp in enumerate(plan.IonBeamSequence[0].IonControlPointSequence):
            if index % 2:
                cp.ScanSpotMetersetWeights = [50.0] * len(cp.ScanSpotMetersetWeights)

    edit_plan(bundle, weigh_odd_points)
    assert beam1_here(bundle).returncode == 0
    assert np.array_equal(read_output(bundle, 1), before)


def test_ct_slices_are_ordered_by_position_not_by_name(bundle: Bundle) -> None:
    assert beam1_here(bundle).returncode == 0
    before = read_output(bundle, 1)
    cts = sorted((bundle.path / "input").glob("CT*.dcm"))
    for index, path in enumerate(cts):
        path.rename(path.with_name(f"zz_{len(cts) - index:03d}.dcm"))
    assert beam1_here(bundle).returncode == 0
    assert np.array_equal(read_output(bundle, 1), before)


def test_beam_numbers_zero_runs_every_treatment_beam(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "b", setup_beam=True)
    replace_parameter(bundle, 1, "BeamNumbers", "0")
    assert beam1_here(bundle).returncode == 0
    assert outputs(bundle) == ["B1_0_Dose.raw", "B2_0_Dose.raw"]


def test_seconds_makes_it_take_that_long(bundle: Bundle) -> None:
    started = time.monotonic()
    assert beam1(bundle, "--seconds", "1.5").returncode == 0
    assert time.monotonic() - started >= 1.5


def test_help_says_it_is_not_a_dose_engine() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mqi.testing.standin", "--help"], capture_output=True, text=True, check=True
    )
    assert "NOT A DOSE ENGINE" in done.stdout


def test_the_console_script_runs(bundle: Bundle) -> None:
    script = Path(sys.executable).with_name("mqi-moqui-standin")
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    done = subprocess.run(
        [str(script), "beams/1/moqui_tps.in"], cwd=bundle.path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert outputs(bundle) == ["B1_0_Dose.raw"]


# --- failing like MOQUI ---------------------------------------------------------------
def test_missing_parameter_file(bundle: Bundle) -> None:
    done = run_standin(bundle.path, "nowhere.in")
    assert_aborted(done, "Cannot open the parameter file nowhere.in")


def test_missing_parent_dir(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "ParentDir", None)
    assert_aborted(beam1(bundle), "ParentDir is not provided")
    assert outputs(bundle) == []


def test_missing_output_dir(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "OutputDir", None)
    assert_aborted(beam1(bundle), "Output directory is not provided.")


def test_existing_output_dir_without_overwrite(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "OverwriteResults", None)
    (bundle.beam_dir(1) / "output").mkdir()
    assert_aborted(beam1(bundle), "Output directory exists.")
    replace_parameter(bundle, 1, "OverwriteResults", "true")
    assert beam1(bundle).returncode == 0


def test_output_dir_is_created_before_the_dicom_is_read(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "DicomDir", "empty")
    (bundle.path / "empty").mkdir()
    done = beam1(bundle)
    assert done.returncode == 134
    assert (bundle.beam_dir(1) / "output").is_dir()


def test_missing_parent_of_output_dir_ends_with_cannot_write(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "OutputDir", "beams/1/missing/output")
    done = beam1(bundle)
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1] == "Cannot write :beams/1/missing/output/B1_0_Dose.raw"
    assert not (bundle.beam_dir(1) / "missing").exists()


def test_no_rtplan(bundle: Bundle) -> None:
    (bundle.path / bundle.manifest.plan_file).unlink()
    assert_aborted(beam1(bundle), "There is no RTPLAN in the path. Exiting.")


def test_unknown_beam_number(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "BeamNumbers", "9")
    assert_aborted(beam1(bundle), "Invalid beam number.")


def test_absent_beam_numbers_crashes(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "BeamNumbers", None)
    done = beam1(bundle)
    assert done.returncode == 139 and done.stderr == ""


def test_unsigned_ct_aborts(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "b", unsigned_ct=True)
    done = beam1(bundle)
    assert done.returncode == 134
    assert "signed 16-bit" in done.stderr


def test_the_dicom_dir_is_not_searched_recursively(bundle: Bundle) -> None:
    nested = bundle.path / "input" / "nested"
    nested.mkdir()
    (bundle.path / bundle.manifest.plan_file).rename(nested / "plan.dcm")
    assert_aborted(beam1(bundle), "There is no RTPLAN in the path. Exiting.")


def test_a_non_number_aborts_like_stoi(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "GPUID", "first")
    done = beam1(bundle)
    assert done.returncode == 134
    assert done.stderr.splitlines() == [
        "terminate called after throwing an instance of 'std::invalid_argument'",
        "  what():  stoi",
    ]


def test_negative_particles_per_history_gives_negative_dose(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "ParticlesPerHistory", "-1")
    assert beam1_here(bundle).returncode == 0
    assert read_output(bundle, 1).max() <= 0 < -read_output(bundle, 1).min()


# --- injected failures -------------------------------------------------------------
def test_fail_mode_134(bundle: Bundle) -> None:
    done = beam1(bundle, "--fail-beams", "1,3", "--fail-mode", "134")
    assert done.returncode == 134
    assert done.stderr.startswith(TERMINATE)
    assert "Time taken" not in done.stdout and outputs(bundle) == []


def test_fail_mode_139_prints_nothing_more(bundle: Bundle) -> None:
    done = beam1(bundle, "--fail-beams", "1", "--fail-mode", "139")
    assert done.returncode == 139 and done.stderr == ""
    assert "Generating particles..." in done.stdout and "Time taken" not in done.stdout
    assert outputs(bundle) == []


def test_fail_mode_255_is_a_cuda_error(bundle: Bundle) -> None:
    done = beam1(bundle, "--fail-beams", "1", "--fail-mode", "255")
    assert done.returncode == 255
    assert done.stderr.startswith("CUDA error: ")
    assert outputs(bundle) == []


def test_fail_mode_no_output_exits_zero_without_a_file(bundle: Bundle) -> None:
    done = beam1(bundle, "--fail-beams", "1", "--fail-mode", "no-output")
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1].startswith("Cannot write :")
    assert outputs(bundle) == []


def test_fail_beams_spares_other_beams(bundle: Bundle) -> None:
    done = beam1_here(bundle, "--fail-beams", "2", "--fail-mode", "139")
    assert done.returncode == 0
    assert outputs(bundle) == ["B1_0_Dose.raw"]


def test_fail_attempts_fails_only_the_first_runs(bundle: Bundle) -> None:
    flags = ("--fail-beams", "1", "--fail-mode", "134", "--fail-attempts", "1")
    assert beam1(bundle, *flags).returncode == 134
    assert beam1(bundle, *flags).returncode == 0, "the second run of the beam succeeds"
    assert outputs(bundle) == ["B1_0_Dose.raw"]


# --- the real case -----------------------------------------------------------------
@needs_aptg
def test_aptg_beam_is_plausible(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "aptg", source="aptg")
    done = run_engine(bundle, 1)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("Time taken by MC engine: ")
    dose = read_output(bundle, 1)
    assert dose.shape == (61, 128, 128)
    assert 0.5 < dose.max() < 5.0  # the TPS beam dose peaks near 2 Gy


def test_a_negative_seed_is_still_reproducible(bundle: Bundle) -> None:
    replace_parameter(bundle, 1, "RandomSeed", "-7")
    assert beam1_here(bundle).returncode == 0
    first = read_output(bundle, 1).tobytes()
    assert beam1_here(bundle).returncode == 0
    assert read_output(bundle, 1).tobytes() == first
