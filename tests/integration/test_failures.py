"""The failure matrix on the real cluster: every way a case can fail ends in a settled case
with a reason a physicist can act on, nothing delivered twice, and the other cases delivered
in the same cycle. Faults after the engine are injected by wrapping the remote Python the
post job runs (a script that runs the real post-processing, then breaks what it wrote)."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from mqi.bundle import sha256_file
from mqi.testing.synthetic import build_case
from tests.helpers import ROOT, cancel_case_jobs, run_mqi, slurm_jobs, submit_json

pytestmark = pytest.mark.cluster

# What the post wrapper does after the real post-processing ran (in the bundle's root).
POST_FAULTS = {
    "truncated-summary": "head -c 40 results/summary.json > results/s && mv results/s results/summary.json",
    "not-json-summary": "printf 'not json' > results/summary.json",
    "missing-result": "rm -f results/RD.beam1.dcm",
    "purged-folder": 'rm -rf "$PWD"',
    "damaged-result": "cp results/RD.beam1.dcm results/.good && printf X | dd of=results/RD.beam1.dcm "
    "bs=1 seek=200 conv=notrunc 2>/dev/null",
}


class Site:
    """One store, one results folder, many configs that differ in the engine or the post Python."""

    def __init__(self, make_config: Callable[..., Path], tmp_path: Path) -> None:
        self.base = yaml.safe_load(make_config("local").read_text())
        self.tmp = tmp_path
        self.python = self.base["cluster"]["python"]
        self.standin = os.environ["MQI_TEST_STANDIN"]

    def config(self, name: str, *, engine: str = "", python: str | None = None) -> Path:
        data = json.loads(json.dumps(self.base))
        data["moqui"]["command"] = f"{self.standin} {engine}".strip()
        data["cluster"]["python"] = python or self.python
        path = self.tmp / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        return path

    def post_fault(self, name: str) -> Path:
        """A config whose post job runs the real post-processing, then the fault ``name``."""
        script = self.tmp / "wrappers" / f"{name}.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(f'#!/bin/bash\n{self.python} "$@"; rc=$?\n{POST_FAULTS[name]}\nexit $rc\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return self.config(name, python=str(script))

    def case(self, name: str) -> Path:
        folder = self.tmp / "cases" / name
        build_case(folder, ct_shape=(24, 24, 12), layers=2, spots_per_layer=9)
        return folder


def status_of(config: Path, case_id: str) -> dict[str, Any]:
    result = run_mqi("status", case_id, "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def poll_json(config: Path) -> tuple[int, dict[str, Any]]:
    result = run_mqi("poll", "--config", str(config), "--json")
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def poll_until_settled(config: Path, timeout: float = 300) -> None:
    result = run_mqi(
        "poll", "--wait", "--timeout", str(timeout), "--config", str(config), timeout=timeout + 60
    )
    assert result.returncode == 0, result.stderr


ENGINE_FAILURES = {
    "exit-134": ("--fail-beams 1,2 --fail-mode 134", "134"),
    "exit-139": ("--fail-beams 1,2 --fail-mode 139", "139"),
    "exit-255": ("--fail-beams 1,2 --fail-mode 255", "255"),
    "no-output": ("--fail-beams 1,2 --fail-mode no-output", "output"),
}


def test_every_failure_settles_and_healthy_cases_are_delivered(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    site = Site(make_config, tmp_path)
    submitted: dict[str, tuple[Path, str]] = {}
    for name, (engine, _) in ENGINE_FAILURES.items():
        submitted[name] = (
            config := site.config(name, engine=engine),
            submit_json(config, site.case(name))["case_id"],
        )
    no_python = site.config("no-python", python="/nonexistent/python3")
    submitted["no-python"] = (no_python, submit_json(no_python, site.case("no-python"))["case_id"])
    for fault in ("truncated-summary", "not-json-summary", "missing-result", "purged-folder"):
        config = site.post_fault(fault)
        submitted[fault] = (config, submit_json(config, site.case(fault))["case_id"])
    healthy = site.config("healthy")
    submitted["healthy"] = (healthy, submit_json(healthy, site.case("healthy"))["case_id"])
    try:
        poll_until_settled(healthy)
        cases = {name: status_of(healthy, case_id) for name, (_, case_id) in submitted.items()}
    finally:
        for _, case_id in submitted.values():
            cancel_case_jobs(status_of(healthy, case_id)["case_uid"])

    assert cases["healthy"]["status"] == "completed"
    assert sorted(p.name for p in Path(cases["healthy"]["results_dir"]).glob("*.dcm")) == [
        "RD.beam1.dcm",
        "RD.beam2.dcm",
        "RD.plan.dcm",
    ]
    for name, (_, code) in ENGINE_FAILURES.items():
        case = cases[name]
        assert case["status"] == "failed", (name, case)
        assert all(b["status"] == "failed" and code in (b["reason"] or "") for b in case["beams"]), case[
            "beams"
        ]
        delivered = Path(case["results_dir"])
        assert list(delivered.glob("*.dcm")) == [], "no dose, and nothing pretends to be one"
        summary = json.loads((delivered / "summary.json").read_text())
        assert [b["status"] for b in summary["beams"]] == ["failed", "failed"]
        assert "beam 1:" in case["error"] and "beam 2:" in case["error"]
    assert cases["no-python"]["status"] == "failed"
    assert "without a summary" in cases["no-python"]["error"] and "mqi logs" in cases["no-python"]["error"]
    for name in ("truncated-summary", "not-json-summary"):
        assert cases[name]["status"] == "failed", cases[name]
        assert "summary.json is unreadable" in cases[name]["error"]
    missing = cases["missing-result"]
    assert missing["status"] == "failed" and "RD.beam1.dcm" in missing["error"]
    kept = Path(missing["results_dir"])
    assert sorted(p.name for p in kept.glob("*.dcm")) == ["RD.beam2.dcm", "RD.plan.dcm"]
    assert {b["number"]: b["status"] for b in missing["beams"]} == {1: "failed", 2: "completed"}
    purged = cases["purged-folder"]
    assert purged["status"] == "failed" and "removed before delivery" in purged["error"]

    again = run_mqi("poll", "--config", str(healthy), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["delivered"] == [], "nothing delivered twice"


def test_a_damaged_download_is_retried_then_delivered(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    site = Site(make_config, tmp_path)
    damaged = site.post_fault("damaged-result")
    healthy = site.config("healthy")
    bad_id = submit_json(damaged, site.case("damaged"))["case_id"]
    good_id = submit_json(healthy, site.case("fine"))["case_id"]
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            code, report = poll_json(healthy)
            assert code == 0, report
            if any(bad_id in line for line in report.get("case_errors", [])):
                break
            time.sleep(1)
        else:
            pytest.fail("the damaged file was never noticed")
        bad = status_of(healthy, bad_id)
        assert bad["status"] not in ("completed", "failed") and "sha256 mismatch" in bad["error"]
        assert bad["results_dir"] is None, "nothing damaged is put in place"
        remote = Path(site.base["cluster"]["remote_dir"]) / bad["case_uid"] / "results"
        (remote / ".good").rename(remote / "RD.beam1.dcm")  # the transfer works next time
        poll_until_settled(healthy)
        bad, good = status_of(healthy, bad_id), status_of(healthy, good_id)
    finally:
        for case_id in (bad_id, good_id):
            cancel_case_jobs(status_of(healthy, case_id)["case_uid"])
    assert good["status"] == "completed" and bad["status"] == "completed", (good, bad)
    results = Path(bad["results_dir"])
    summary = json.loads((results / "summary.json").read_text())
    assert all(sha256_file(results / name) == digest for name, digest in summary["files"].items())
    assert bad["error"] is None


def _kill_slurmdbd() -> None:
    pid = (Path(os.environ["MQI_DEV_DIR"]) / "run" / "slurmdbd.pid").read_text().strip()
    os.kill(int(pid), signal.SIGTERM)
    for _ in range(50):
        if subprocess.run(["sacct", "-X", "-n", "-S", "now-1minutes"], capture_output=True).returncode != 0:
            return
        time.sleep(0.2)


def test_accounting_down_mirrors_squeue_and_loses_nothing(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    site = Site(make_config, tmp_path)
    slow = site.config("slow", engine="--seconds 15")
    case_id = submit_json(slow, site.case("slow"))["case_id"]
    try:
        _kill_slurmdbd()
        seen: set[str] = set()
        for _ in range(90):
            code, report = poll_json(slow)
            assert code == 0, report
            assert report["accounting_down"] is True
            assert any("accounting unavailable" in w for w in report["warnings"])
            case = status_of(slow, case_id)
            assert case["status"] in ("submitted", "running", "postprocessing", "completed"), case
            assert all(j["state"] != "LOST" for j in case["jobs"])
            seen |= {b["status"] for b in case["beams"]}
            if case["status"] == "completed":
                break  # squeue -t all still lists the jobs that just ended
            time.sleep(1)
        assert "running" in seen, "squeue's view reached the beams while accounting was down"
    finally:
        subprocess.run([str(ROOT / "scripts" / "dev-cluster.sh"), "start"], check=True, capture_output=True)
    poll_until_settled(slow)
    case = status_of(slow, case_id)
    cancel_case_jobs(case["case_uid"])
    assert case["status"] == "completed", case


def _undecodable_ct(folder: Path) -> None:
    """Every CT slice claims JPEG Baseline and carries bytes no decoder reads."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path, force=True)
        if getattr(ds, "Modality", None) != "CT":
            continue
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8not a jpeg\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)


def _zero_slope(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, force=True)
            if getattr(ds, "Modality", None) == "CT":
                ds.RescaleSlope = 0
                ds.save_as(path, enforce_file_format=True)


def test_scan_rejects_bad_cases_submits_good_ones_and_run_keeps_going(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config("local")
    incoming = tmp_path / "incoming"
    for name in ("a-undecodable", "b-zero-slope", "c-good", "d-good"):
        build_case(incoming / name, ct_shape=(24, 24, 12), layers=2, spots_per_layer=9)
    _undecodable_ct(incoming / "a-undecodable")
    _zero_slope(incoming / "b-zero-slope")
    scanned = run_mqi("scan", "--config", str(config), "--json")
    assert scanned.returncode == 0, scanned.stderr
    report = json.loads(scanned.stdout)
    assert len(report["rejected"]) == 2 and len(report["submitted"]) == 2 and report["errors"] == []
    try:
        for case_id in report["rejected"]:
            case = status_of(config, case_id)
            assert case["status"] == "rejected" and case["errors"], case
        again = json.loads(run_mqi("scan", "--config", str(config), "--json").stdout)
        assert again["submitted"] == [] and again["rejected"] == [], (
            "a rejected folder is not retried unchanged"
        )

        build_case(incoming / "e-good", ct_shape=(24, 24, 12), layers=2, spots_per_layer=9)
        _undecodable_ct(incoming / "a-undecodable")  # touched: looked at again, rejected again
        service = subprocess.Popen(
            [sys.executable, "-m", "mqi", "run", "--interval", "1", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(12)
        assert service.poll() is None, "mqi run keeps running through bad cases"
        service.send_signal(signal.SIGTERM)
        output, _ = service.communicate(timeout=60)
        assert service.returncode == 0, output
        assert "submitted e-good" in output and "Traceback" not in output
    finally:
        for case_id in report["submitted"]:
            cancel_case_jobs(status_of(config, case_id)["case_uid"])


STEADY_FAULTS = [
    "healthy",
    "exit-134",
    "no-output",
    "one-beam",
    "no-python",
    "truncated-summary",
    "missing-result",
]


def test_random_failures_across_ten_cases_all_settle_once(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    site = Site(make_config, tmp_path)
    rng = random.Random(int(os.environ.get("MQI_TEST_SEED", "17")))
    plan = [rng.choice(STEADY_FAULTS) for _ in range(10)]
    ids = []
    for n, fault in enumerate(plan):
        if fault == "healthy":
            config = site.config("healthy")
        elif fault in ENGINE_FAILURES:
            config = site.config(fault, engine=ENGINE_FAILURES[fault][0])
        elif fault == "one-beam":
            config = site.config(fault, engine="--fail-beams 2 --fail-mode 139")
        elif fault == "no-python":
            config = site.config(fault, python="/nonexistent/python3")
        else:
            config = site.post_fault(fault)
        ids.append(submit_json(config, site.case(f"case{n}-{fault}"))["case_id"])
    healthy = site.config("healthy")
    try:
        poll_until_settled(healthy, timeout=400)
        cases = [status_of(healthy, case_id) for case_id in ids]
    finally:
        for case_id in ids:
            cancel_case_jobs(status_of(healthy, case_id)["case_uid"])
    for fault, case in zip(plan, cases, strict=True):
        assert case["status"] == ("completed" if fault == "healthy" else "failed"), (fault, case)
        posts = slurm_jobs(case["case_uid"])["post"]
        assert len(posts) == 1, f"{fault}: each chain exactly once"
    code, report = poll_json(healthy)
    assert code == 0 and report["delivered"] == [] and report["active_cases"] == 0
