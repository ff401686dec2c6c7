"""What a bundle carries to the cluster (issue 11): no name from the case folder outside
the DICOM files, only the files intake classified, private modes, and no staging folder
of patient DICOM left behind by an interrupted render."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from mqi.config import parse_config
from mqi.intake import IntakeOptions, read_case
from mqi.render import render_bundle, sweep_stale_staging
from mqi.submit import bundle_checksums
from mqi.testing.synthetic import SyntheticCase, build_case
from tests.unit.intake_fixtures import build_small, edit

MARKER = "ZQXMARK"


def marked_case(folder: Path) -> SyntheticCase:
    """A case whose patient, folder, file names, plan label, beam names and log names
    all carry the marker, with a log CSV at the top of the folder and files intake ignores."""
    case = build_small(
        folder,
        patient_id=f"ID-{MARKER}",
        patient_name=f"{MARKER}^Jane",
        beam_names=[f"{MARKER} b1", f"{MARKER} b2"],
    )
    edit(case.plan, lambda ds: setattr(ds, "RTPlanLabel", f"{MARKER} plan"))
    case.plan.rename(folder / f"RP_{MARKER}.dcm")
    case.rtstruct.rename(folder / f"RS_{MARKER}.dcm")
    for dose in case.doses:
        dose.rename(dose.with_name(f"{MARKER}_{dose.name}"))
    ct = folder / f"{MARKER}_ct"
    (folder / "ct").rename(ct)
    for path in sorted(ct.iterdir()):
        path.rename(ct / f"{MARKER}_{path.name}")
    logs = folder / f"logs_{MARKER}"
    logs.mkdir()
    for number in (1, 2):
        (logs / f"{MARKER}_beam{number}.csv").write_text("layer,spot,mu\n1,1,0.5\n")
    (folder / f"{MARKER}_summary.csv").write_text("beam,mu\n1,10\n")
    (folder / f"notes_{MARKER}.txt").write_text(f"{MARKER} private notes\n")
    (folder / "scans").mkdir()
    (folder / "scans" / f"{MARKER}.pdf").write_bytes(b"%PDF-1.4 " + MARKER.encode())
    return case


def test_no_name_from_the_case_reaches_the_bundle_outside_dicom(tmp_path: Path) -> None:
    folder = tmp_path / f"Case {MARKER} Doe"
    marked_case(folder)
    result = read_case(folder, IntakeOptions())
    assert result.valid, [p.message for p in result.errors]
    assert result.case is not None
    config = parse_config({"state_dir": str(tmp_path / "state")})
    rendered = render_bundle(result.case, config, tmp_path / "bundle")
    root = rendered.path

    files = sorted(p for p in root.rglob("*") if p.is_file())
    leaked_paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if MARKER in p.name]
    assert leaked_paths == []
    for path in files:
        rel = path.relative_to(root).as_posix()
        is_dicom = path.suffix == ".dcm" and pydicom.misc.is_dicom(path)
        if not is_dicom:
            assert MARKER.encode() not in path.read_bytes(), f"{rel} carries the marker"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["plan_label"] == ""  # the keys of format 1 stay, empty
    assert [beam["name"] for beam in manifest["beams"]] == ["", ""]

    # only the classified files: three logs under opaque names, nothing else of the folder
    assert sorted(p.name for p in (root / "delivery_logs").iterdir()) == [
        "log_0001.csv",
        "log_0002.csv",
        "log_0003.csv",
    ]
    assert sorted(rendered.delivery_logs.values()) == sorted(
        [f"logs_{MARKER}/{MARKER}_beam1.csv", f"logs_{MARKER}/{MARKER}_beam2.csv", f"{MARKER}_summary.csv"]
    )
    assert not any(p.suffix in (".txt", ".pdf") for p in files)
    uploaded = set(bundle_checksums(root))
    tops = {name.split("/")[0] for name in uploaded}
    assert tops <= {"input", "tps", "delivery_logs", "beams", "jobs", "manifest.json", "qa_config.json"}
    # the rest stays on the workstation: the CT sources' sha256 for the next render
    assert [
        p.relative_to(root).as_posix() for p in files if p.relative_to(root).as_posix() not in uploaded
    ] == [".local/ct_sources.json"]


def test_bundle_is_private(tmp_path: Path) -> None:
    case = build_small(tmp_path / "case")
    (case.folder / "logs").mkdir()
    (case.folder / "logs" / "beam1.csv").write_text("a,b\n")
    result = read_case(case.folder, IntakeOptions())
    assert result.case is not None
    config = parse_config({"state_dir": str(tmp_path / "state")})
    root = render_bundle(result.case, config, tmp_path / "out" / "bundle").path
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir() or (path.parent.name == "jobs" and path.suffix in (".sbatch", ".sh")):
            assert mode == 0o700, path
        else:
            assert mode == 0o600, path


RENDER_SCRIPT = """
import sys
from pathlib import Path
from mqi.config import parse_config
from mqi.intake import read_case
case, out = Path(sys.argv[1]), Path(sys.argv[2])
result = read_case(case)
assert result.case is not None, result.errors
import time
import mqi.render
from mqi.render import render_bundle
write_slice = mqi.render._write_ct_bytes
def held_open(*args, **kwargs):
    # Each CT slice waits a little, so the render is still writing when the test's signal
    # comes, however late a busy machine lets the test send it.
    time.sleep(0.1)
    return write_slice(*args, **kwargs)
mqi.render._write_ct_bytes = held_open
print("ready", flush=True)
render_bundle(result.case, parse_config({"state_dir": str(out.parent / "state")}), out)
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def slow_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unsigned CT (rewritten as int16 slice by slice; the test's render holds each
    slice open 0.1 s, about 6 s in all)."""
    folder = tmp_path_factory.mktemp("slow") / "case"
    build_case(folder, ct_shape=(64, 64, 60), unsigned_ct=True, with_tps_dose=False)
    return folder


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _start_and_wait_for_staging(case: Path, out: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", RENDER_SCRIPT, str(case), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(name.endswith(".rendering") for name in _hidden(out.parent)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the render never started"
        time.sleep(0.005)
    return process


def test_sigterm_during_render_leaves_no_staging_folder(slow_case: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundles" / "case"
    out.parent.mkdir()
    process = _start_and_wait_for_staging(slow_case, out)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM, stderr
    assert _hidden(out.parent) == []
    assert not out.exists()


def test_a_killed_render_is_swept_by_the_next(slow_case: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundles" / "case"
    out.parent.mkdir()
    process = _start_and_wait_for_staging(slow_case, out)
    process.kill()
    process.communicate(timeout=60)
    left = _hidden(out.parent)
    assert len(left) == 1 and left[0].endswith(".rendering")
    assert sweep_stale_staging(out.parent) == [out.parent / left[0]]
    assert _hidden(out.parent) == []


def test_a_live_renders_staging_folder_is_not_swept(tmp_path: Path) -> None:
    live = tmp_path / f".other.{os.getppid()}.abcd1234.rendering"
    live.mkdir()
    dead = tmp_path / f".other.{2**22 + 12345}.abcd1234.rendering"
    dead.mkdir()
    assert sweep_stale_staging(tmp_path) == [dead]
    assert live.is_dir()


def test_after_engine_and_post_the_marker_is_only_inside_dicom(tmp_path: Path) -> None:
    """What the cluster would hold after a run: the stand-in engine's output files (named
    after the beams by MOQUI), its logs, results/summary.json and the post log."""
    from mqi.post import postprocess_bundle
    from tests.unit.engine_fixtures import Bundle, run_all_beams

    folder = tmp_path / f"Case {MARKER}"
    marked_case(folder)
    result = read_case(folder, IntakeOptions())
    assert result.case is not None
    config = parse_config({"state_dir": str(tmp_path / "state")})
    rendered = render_bundle(result.case, config, tmp_path / "bundle")
    plan = pydicom.dcmread(rendered.path / "input" / "RTPLAN.dcm")
    assert all(MARKER not in str(item.BeamName) for item in plan.IonBeamSequence)
    run_all_beams(Bundle(rendered.path, rendered.manifest), process=False)
    log = tmp_path / "post.log"
    with log.open("w") as handle:
        summary = postprocess_bundle(rendered.path, log=handle)
    assert summary["plan_status"] == "completed"
    assert MARKER not in log.read_text()
    for path in rendered.path.rglob("*"):
        assert MARKER not in path.name, path
        if path.is_file() and not (path.suffix == ".dcm" and pydicom.misc.is_dicom(path)):
            assert MARKER.encode() not in path.read_bytes(), path
