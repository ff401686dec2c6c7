"""Every invalid value of issue 11, through the real command line: `mqi check --json` names
the code and exits 2 with strict JSON; `mqi submit --dry-run` refuses the case with exit 2
and one line, never a traceback or an `unexpected` error. Valid encodings pass both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mqi.testing.synthetic import SyntheticCase
from tests.unit.corrupt_cases import REJECT, VALID, Variant, variants
from tests.unit.intake_fixtures import pristine_fixture, relocate  # noqa: F401 (fixture)

ALL = variants()
# one variant per problem code (the corpus test runs all of them in-process)
BY_CODE = list({v.expect: v for v in reversed(ALL) if v.expect not in (REJECT, VALID)}.values())
ENCODINGS = [v for v in ALL if v.expect == VALID]


def mqi(*args: str | os.PathLike[str] | bytes, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MQI_DEBUG": ""}
    env.pop("MQI_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "mqi", *args],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        cwd=cwd,
        timeout=120,
    )


def strict_json(text: str) -> object:
    """json.loads that refuses NaN and Infinity, which are not JSON."""

    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def config_file(folder: Path, *, read_structure: bool = False) -> Path:
    path = folder / "mqi.yaml"
    text = f"state_dir: {folder / 'state'}\n"
    if read_structure:
        text += "moqui:\n  parameters:\n    ParticlesPerHistory: 1000\n    ReadStructure: true\n"
    path.write_text(text)
    return path


def broken(pristine: SyntheticCase, tmp_path: Path, variant: Variant) -> SyntheticCase:
    case = relocate(pristine, tmp_path / "case")
    variant.breaker(case)
    return case


def assert_clean_failure(ran: subprocess.CompletedProcess[str]) -> None:
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr and "unexpected" not in ran.stderr, ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr


@pytest.mark.parametrize("variant", BY_CODE, ids=lambda v: v.expect)
def test_invalid_value_is_rejected_by_check_and_dry_run(
    pristine: SyntheticCase, tmp_path: Path, variant: Variant
) -> None:
    case = broken(pristine, tmp_path, variant)
    config = config_file(tmp_path, read_structure=variant.read_structure)
    checked = mqi("check", "--json", "--config", config, case.folder)
    assert checked.returncode == 2, checked.stderr
    assert "Traceback" not in checked.stderr
    report = strict_json(checked.stdout)
    assert isinstance(report, dict) and report["valid"] is False
    codes = [error["code"] for error in report["errors"]]
    assert variant.expect in codes, (variant.name, codes)
    assert "INTAKE_FAILED" not in codes
    dry = mqi("submit", "--dry-run", "--out", tmp_path / "bundle", "--config", config, case.folder)
    assert_clean_failure(dry)
    assert report["errors"][0]["message"] in dry.stderr
    assert not (tmp_path / "bundle").exists()


def hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.mark.parametrize("variant", ENCODINGS, ids=lambda v: v.name)
def test_valid_encodings_are_accepted_and_rendered_with_the_same_hu(
    pristine: SyntheticCase, tmp_path: Path, variant: Variant
) -> None:
    case = broken(pristine, tmp_path, variant)
    config = config_file(tmp_path)
    checked = mqi("check", "--json", "--config", config, case.folder)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert strict_json(checked.stdout)["valid"] is True  # type: ignore[index]
    out = tmp_path / "bundle"
    dry = mqi("submit", "--dry-run", "--out", out, "--config", config, case.folder)
    assert dry.returncode == 0, dry.stderr
    written = sorted((out / "input").glob("CT_*.dcm"))
    assert len(written) == len(pristine.ct)
    for source, rendered in zip(sorted(pristine.ct), written, strict=True):
        assert np.array_equal(hu(source), hu(rendered)), rendered.name
        meta = pydicom.dcmread(rendered, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_a_case_folder_whose_name_is_not_utf8_is_valid(pristine: SyntheticCase, tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path) + b"/caf\xe9 \xff case"
    relocate(pristine, Path(os.fsdecode(folder)))
    config = config_file(tmp_path)
    checked = mqi("check", "--json", "--config", config, folder)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert strict_json(checked.stdout)["valid"] is True  # type: ignore[index]
    dry = mqi("submit", "--dry-run", "--out", tmp_path / "bundle", "--config", config, folder)
    assert dry.returncode == 0, dry.stderr
    assert (tmp_path / "bundle" / "manifest.json").is_file()


def test_a_case_nested_1500_folders_deep_is_valid(pristine: SyntheticCase, tmp_path: Path) -> None:
    deep = tmp_path / "case"
    deep.mkdir()
    for _ in range(1499):  # one by one: os.makedirs itself recurses per level
        deep = deep / "d"
        deep.mkdir()
    relocate(pristine, deep / "d")
    try:
        checked = mqi("check", "--json", tmp_path / "case")
        assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr
        assert strict_json(checked.stdout)["valid"] is True  # type: ignore[index]
    finally:
        remove_deep(tmp_path / "case")


def remove_deep(top: Path) -> None:
    """Remove a chain of nested ``d`` folders bottom-up: shutil.rmtree (and pytest's
    clean-up of old temporary folders) recurses once per level."""
    chain = [top]
    while (chain[-1] / "d").is_dir():
        chain.append(chain[-1] / "d")
    shutil.rmtree(chain.pop())
    for folder in reversed(chain):
        folder.rmdir()


def test_names_with_newlines_and_escapes_stay_one_quoted_line(
    pristine: SyntheticCase, tmp_path: Path
) -> None:
    case = relocate(pristine, tmp_path / "case")
    evil = case.folder / "ct" / "slice\n\x1b[31mred; $(touch x).dcm"
    case.ct[3].rename(evil)
    evil.write_bytes(evil.read_bytes()[:-100])  # cut short: an error that names the file
    checked = mqi("check", "--json", case.folder)
    assert checked.returncode == 2
    messages = [e["message"] for e in strict_json(checked.stdout)["errors"]]  # type: ignore[index]
    assert all("\n" not in m and "\x1b" not in m for m in messages)
    assert messages[0].startswith("$'ct/slice\\x0a\\x1b[31mred; $(touch x).dcm': ")
    human = mqi("check", case.folder)
    assert human.returncode == 2
    assert "\x1b[31m" not in human.stdout and "DICOM_TRUNCATED" in human.stdout
    dry = mqi("submit", "--dry-run", "--out", tmp_path / "b", "--config", config_file(tmp_path), case.folder)
    assert_clean_failure(dry)
    assert "\x1b" not in dry.stderr


def test_check_json_of_a_case_with_nan_values_is_strict_json(pristine: SyntheticCase, tmp_path: Path) -> None:
    (nan_meterset,) = [v for v in ALL if v.name == "meterset NaN"]
    case = broken(pristine, tmp_path, nan_meterset)
    checked = mqi("check", "--json", case.folder)
    assert "NaN" not in checked.stdout.replace("BeamMeterset is nan", "")
    strict_json(checked.stdout)


def test_the_rejection_line_names_the_code_and_quotes_the_folder(
    pristine: SyntheticCase, tmp_path: Path
) -> None:
    from mqi.intake import read_case

    (zero,) = [v for v in ALL if v.name == "fractions 0"]
    folder = tmp_path / "Case 1; $(touch x)"
    case = relocate(pristine, folder)
    zero.breaker(case)
    line = read_case(folder).rejection()
    assert line.startswith(
        "case rejected: [PLAN_FRACTIONS_INVALID] RP_plan.dcm: NumberOfFractionsPlanned is 0"
    )
    assert line.endswith(f"(see `mqi check '{folder}'`)")


def test_scan_helpers_take_names_that_are_not_utf8(pristine: SyntheticCase, tmp_path: Path) -> None:
    from mqi.config import Readiness
    from mqi.intake import folder_fingerprint, is_ready

    case = relocate(pristine, tmp_path / "case")
    odd = Path(os.fsdecode(os.fsencode(case.folder) + b"/notes \xff.txt"))
    odd.write_text("x")
    assert len(folder_fingerprint(case.folder)) == 64
    assert is_ready(case.folder, Readiness(quiet_seconds=0))[0]
