"""No patient data off the workstation, over a real SSH submit, and no shell injection through
a hostile `cluster.remote_dir`: the marker carried by every name of the case appears on the
cluster only inside DICOM files, and a `$(...)` in a path never runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from tests.helpers import cancel_case_jobs, run_mqi, submit_json
from tests.unit.test_bundle_privacy import MARKER, marked_case

pytestmark = pytest.mark.cluster


def _remote_root(config: Path) -> Path:
    import yaml

    return Path(yaml.safe_load(config.read_text())["cluster"]["remote_dir"])


def test_the_marker_never_reaches_the_cluster_outside_dicom(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config()  # over SSH, as the unprivileged cluster user
    folder = tmp_path / f"Case {MARKER} Doe"
    marked_case(folder)
    outcome = submit_json(config, folder)
    try:
        polled = run_mqi("poll", "--wait", "--timeout", "240", "--config", str(config), timeout=300)
        assert polled.returncode == 0, polled.stderr
        names = ",".join(f"mqi.{outcome['case_uid']}.{step}" for step in ("prepare", "simulate", "post"))
        sacct = subprocess.run(
            [
                "sacct",
                "-a",
                "-n",
                "-P",
                f"--name={names}",
                "-S",
                "now-1hour",
                "--format=JobName,Comment,WorkDir",
            ],
            capture_output=True,
            text=True,
        ).stdout
    finally:
        cancel_case_jobs(outcome["case_uid"])
    assert sacct.strip() and MARKER not in sacct, "job names, comments and work dirs carry no name"
    remote = _remote_root(config) / outcome["case_uid"]
    assert remote.is_dir()
    leaks = []
    for path in [remote, *remote.rglob("*")]:
        if MARKER in path.name:
            leaks.append(f"path {path}")
        elif (
            path.is_file()
            and not (path.suffix == ".dcm" and pydicom.misc.is_dicom(path))
            and MARKER.encode() in path.read_bytes()
        ):
            leaks.append(f"content of {path.relative_to(remote)}")
    assert leaks == [], leaks
    assert (remote / "results" / "summary.json").is_file() and (remote / "logs").is_dir()


HOSTILE = "scratch $(touch PWNED) `touch PWNED2`; x"


def test_mqi_logs_with_a_hostile_remote_dir(make_config: Callable[..., Path], tmp_path: Path) -> None:
    local_root = Path(os.environ["MQI_TEST_LOCAL_DIR"])
    config = make_config("local", cluster={"remote_dir": str(local_root / tmp_path.name / HOSTILE)})
    standin = os.environ["MQI_TEST_STANDIN"]
    config.write_text(config.read_text().replace(f"command: {standin}", f"command: {standin} --fail-beams 2"))
    from mqi.testing.synthetic import build_case

    case = tmp_path / "case"
    build_case(case, ct_shape=(24, 24, 12), layers=2, spots_per_layer=9)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    outcome = submit_json(config, case)
    try:
        polled = run_mqi("poll", "--wait", "--timeout", "240", "--config", str(config), timeout=300)
        assert polled.returncode == 0, polled.stderr
        for args in (("--step", "post"), ("--beam", "2"), ("--step", "prepare")):
            shown = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mqi",
                    "logs",
                    outcome["case_id"],
                    *args,
                    "--config",
                    str(config),
                ],
                capture_output=True,
                text=True,
                cwd=cwd,
                env={**os.environ},
            )
            assert shown.returncode == 0, shown.stderr
            assert "mqi" in shown.stdout
        status = json.loads(run_mqi("status", outcome["case_id"], "--config", str(config), "--json").stdout)
        assert status["status"] == "failed" and "beam 2" in status["error"]
    finally:
        cancel_case_jobs(outcome["case_uid"])
    remote = local_root / tmp_path.name / HOSTILE / outcome["case_uid"]
    assert remote.is_dir(), "the folder has exactly the configured name"
    assert not list(cwd.iterdir()) and not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    assert not (local_root / tmp_path.name / "PWNED").exists()
