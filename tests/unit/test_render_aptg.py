"""Rendering the shared APTG case: golden files, determinism, no names in scripts, bash -n.

The golden files under tests/unit/golden/aptg/ are what mqi writes for the APTG case
with the explicit config in test_render_cases.GOLDEN_CONFIG. After an intended change to
the templates or the renderer, regenerate them and review the diff:

    MQI_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_render_aptg.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from mqi.bundle import read_manifest, sha256_file
from mqi.render import RenderedBundle, render_bundle
from tests.unit.test_render_cases import (
    APTG,
    GOLDEN,
    GOLDEN_FILES,
    SCRIPTS,
    aptg_case,
    bash_syntax_errors,
    bundle_bytes,
    needs_aptg,
    render_config,
)


@pytest.fixture(scope="module")
def aptg_bundle(tmp_path_factory: pytest.TempPathFactory) -> RenderedBundle:
    if not APTG.is_dir():
        pytest.skip(f"the shared APTG case is not at {APTG} (../shared/data)")
    return render_bundle(aptg_case(), render_config(), tmp_path_factory.mktemp("aptg") / "bundle")


@needs_aptg
@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_aptg_files_match_golden(aptg_bundle: RenderedBundle, name: str) -> None:
    written = (aptg_bundle.path / name).read_text(encoding="utf-8")
    golden = GOLDEN / name
    if os.environ.get("MQI_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(written, encoding="utf-8")
    assert golden.is_file(), f"no golden file {golden}: run with MQI_UPDATE_GOLDEN=1 once"
    assert written == golden.read_text(encoding="utf-8"), f"{name} differs from its golden file"


@needs_aptg
@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_passes_bash_n(aptg_bundle: RenderedBundle, name: str) -> None:
    assert bash_syntax_errors(aptg_bundle.path / name) == ""
    assert os.access(aptg_bundle.path / name, os.X_OK)


@needs_aptg
def test_same_case_twice_gives_identical_bundle(aptg_bundle: RenderedBundle, tmp_path: Path) -> None:
    again = render_bundle(aptg_case(), render_config(), tmp_path / "again")
    assert bundle_bytes(again.path) == bundle_bytes(aptg_bundle.path)
    assert again.sbatch_lines == aptg_bundle.sbatch_lines


@needs_aptg
def test_rendering_over_an_old_bundle_replaces_it(aptg_bundle: RenderedBundle, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    render_bundle(aptg_case(), render_config(moqui={"command": "first-engine"}), target)
    (target / "beams" / "1" / "stale").write_text("left over")
    render_bundle(aptg_case(), render_config(), target)
    assert bundle_bytes(target) == bundle_bytes(aptg_bundle.path)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


@needs_aptg
def test_bundle_layout_and_manifest(aptg_bundle: RenderedBundle) -> None:
    root = aptg_bundle.path
    manifest = read_manifest(root)
    # what manifest.json holds: everything but the beam names, which stay on the workstation
    assert manifest.model_dump() == aptg_bundle.manifest.model_dump()
    assert [b.name for b in aptg_bundle.manifest.beams] == ["b1", "b2"]
    assert sorted(p.name for p in (root / "input").iterdir()) == [
        *(f"CT_{i:04d}.dcm" for i in range(61)),
        "RTPLAN.dcm",
        "RTSTRUCT.dcm",
    ]
    assert sorted(p.name for p in (root / "tps").iterdir()) == [
        "RD_BEAM_1.dcm",
        "RD_BEAM_2.dcm",
        "RD_PLAN.dcm",
    ]
    assert [(b.array_index, b.number, b.name, b.dir) for b in manifest.beams] == [
        (0, 1, "", "beams/1"),
        (1, 2, "", "beams/2"),
    ]
    assert manifest.grid.origin == (-127.0, -127.0, -150.0)
    assert (manifest.grid.rows, manifest.grid.columns, manifest.grid.slices) == (128, 128, 61)
    assert manifest.grid.normalised_to_int16 is True
    assert manifest.expected_output_bytes() == 128 * 128 * 61 * 8
    assert manifest.plan_file == "input/RTPLAN.dcm"
    assert manifest.tps_doses == ["tps/RD_PLAN.dcm", "tps/RD_BEAM_1.dcm", "tps/RD_BEAM_2.dcm"]


@needs_aptg
def test_manifest_checksums_cover_every_input_and_match(aptg_bundle: RenderedBundle) -> None:
    root = aptg_bundle.path
    files = aptg_bundle.manifest.files
    expected = {
        p.relative_to(root).as_posix() for top in ("input", "tps") for p in (root / top).iterdir()
    } | {"beams/1/moqui_tps.in", "beams/2/moqui_tps.in", *SCRIPTS}
    assert set(files) == expected
    assert all(sha256_file(root / name) == digest for name, digest in files.items())
    done = subprocess.run(
        ["sha256sum", "--check", "--strict", "--quiet", "jobs/checksums.sha256"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_aptg
def test_tps_doses_are_copied_unchanged(aptg_bundle: RenderedBundle) -> None:
    plan_dose = next(APTG.glob("RD*3000*.dcm"))
    assert (aptg_bundle.path / "tps" / "RD_PLAN.dcm").read_bytes() == plan_dose.read_bytes()


@needs_aptg
def test_sbatch_lines_are_the_chain_submit_sh_runs(aptg_bundle: RenderedBundle) -> None:
    prepare, simulate, post = aptg_bundle.sbatch_lines
    submit = (aptg_bundle.path / "jobs" / "submit.sh").read_text()
    for line in aptg_bundle.sbatch_lines:
        assert line in submit
        assert line.startswith("sbatch --parsable ")
        assert "--kill-on-invalid-dep=yes" in line
        assert "--nice=100" in line
    assert prepare.endswith("jobs/prepare.sbatch")
    assert '--dependency=afterok:"$prepare_id"' in simulate
    assert '--dependency=afterany:"$simulate_id"' in post


@needs_aptg
def test_no_patient_identity_in_scripts_or_engine_inputs(tmp_path: Path) -> None:
    evil_dir = tmp_path / "$(touch pwned); x"
    shutil.copytree(APTG, evil_dir)
    case = aptg_case(evil_dir, beam_names=["b1; rm -rf ~", "$(touch pwned)"])
    bundle = render_bundle(case, render_config(), tmp_path / "bundle")
    plan = pydicom.dcmread(case.plan.path)
    secrets = [evil_dir.name, case.case_id, *(beam.name for beam in case.beams)]
    secrets += [str(plan.PatientID), str(plan.PatientName), "WTR303030", "pwned"]
    texts = {name: (bundle.path / name).read_text() for name in GOLDEN_FILES}
    texts["sbatch lines"] = "\n".join(bundle.sbatch_lines)
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} appears in {name}"
    for name in SCRIPTS:
        assert bash_syntax_errors(bundle.path / name) == ""
    assert not list(tmp_path.rglob("pwned"))


@needs_aptg
def test_a_case_from_intake_renders(tmp_path: Path) -> None:
    intake = pytest.importorskip("mqi.intake")
    if not hasattr(intake, "read_case"):
        pytest.skip("mqi.intake.read_case is not there yet")
    result = intake.read_case(APTG, intake.IntakeOptions(allow_patient_id_mismatch=True))
    assert result.case is not None, result.errors
    bundle = render_bundle(result.case, render_config(), tmp_path / "b")
    assert [b.number for b in bundle.manifest.beams] == [1, 2]
    assert bundle.manifest.grid.normalised_to_int16 is True
    uid = result.case.case_uid
    assert f"--job-name=mqi.{uid}.simulate" in (bundle.path / "jobs/simulate.sbatch").read_text()
