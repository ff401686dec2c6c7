"""The rest of the failure matrix, where Slurm itself ends or moves the jobs: a time limit,
a requeue, a node that goes down, and a full (unwritable) results folder when the post job
writes. Each ends in a settled case with a reason a physicist can act on, delivered once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from mqi.testing.synthetic import build_case
from tests.helpers import cancel_case_jobs, resume_drained_nodes, run_mqi, slurm_jobs, submit_json

pytestmark = pytest.mark.cluster


def small_case(root: Path, name: str) -> Path:
    build_case(root / name, ct_shape=(24, 24, 12), layers=2, spots_per_layer=9)
    return root / name


def status_of(config: Path, case_id: str) -> dict:
    result = run_mqi("status", case_id, "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def poll_until_settled(config: Path, timeout: int = 300) -> None:
    result = run_mqi(
        "poll", "--wait", "--timeout", str(timeout), "--config", str(config), timeout=timeout + 60
    )
    assert result.returncode == 0, result.stderr


def running_task(case_uid: str, timeout: float = 120) -> str:
    """The id of a simulate task once Slurm runs it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in slurm_jobs(case_uid)["simulate"]:
            if record.state == "RUNNING":
                return record.job_id
        time.sleep(0.5)
    raise AssertionError("no simulate task started")


def test_beams_over_their_time_limit_fail_with_the_reason(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    standin = os.environ["MQI_TEST_STANDIN"]
    config = make_config(slurm={"time_limit": "00:01:00"}, moqui={"command": f"{standin} --seconds 150"})
    outcome = submit_json(config, small_case(tmp_path, "slow"))
    try:
        poll_until_settled(config, timeout=400)
        case = status_of(config, outcome["case_id"])
    finally:
        cancel_case_jobs(outcome["case_uid"])
    assert case["status"] == "failed", case
    for beam in case["beams"]:
        assert beam["status"] == "failed" and "time limit" in (beam["reason"] or ""), beam
    assert "beam 1:" in case["error"] and "beam 2:" in case["error"]
    assert Path(case["results_dir"], "summary.json").is_file(), "a failed case is delivered with its summary"


def test_a_requeued_task_runs_again_and_the_case_is_delivered_once(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    standin = os.environ["MQI_TEST_STANDIN"]
    config = make_config(moqui={"command": f"{standin} --seconds 8"})
    outcome = submit_json(config, small_case(tmp_path, "requeued"))
    try:
        task = running_task(outcome["case_uid"])
        requeued = subprocess.run(["scontrol", "requeue", task], capture_output=True, text=True)
        assert requeued.returncode == 0, requeued.stderr
        # Slurm makes a requeued batch job eligible again about two minutes later.
        poll_until_settled(config)
        case = status_of(config, outcome["case_id"])
        posts = slurm_jobs(outcome["case_uid"])["post"]
    finally:
        cancel_case_jobs(outcome["case_uid"])
    assert case["status"] == "completed", case
    assert len(posts) == 1 and len({j["generation"] for j in case["jobs"]}) == 1, "no second chain"
    again = json.loads(run_mqi("poll", "--config", str(config), "--json").stdout)
    assert again["delivered"] == []


def test_a_node_that_goes_down_mid_run_settles_the_case(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    standin = os.environ["MQI_TEST_STANDIN"]
    config = make_config(moqui={"command": f"{standin} --seconds 15"})
    outcome = submit_json(config, small_case(tmp_path, "node"))
    node = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()[0]
    try:
        running_task(outcome["case_uid"])
        subprocess.run(
            ["scontrol", "update", f"nodename={node}", "state=down", "reason=mqi-test"], check=True
        )
        time.sleep(3)
        # ReturnToService may have brought it back already; resume only what is still down.
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        poll_until_settled(config, timeout=400)
        case = status_of(config, outcome["case_id"])
    finally:
        resume_drained_nodes()
        cancel_case_jobs(outcome["case_uid"])
    assert case["status"] in ("completed", "failed"), case
    if case["status"] == "failed":  # Slurm did not requeue: the reason names the node
        assert any("node" in (b["reason"] or "") for b in case["beams"]), case["beams"]
    assert all(j["state"] != "LOST" for j in case["jobs"])


def test_an_unwritable_results_folder_fails_the_post_job_with_its_log(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config()  # over SSH: the unprivileged cluster user cannot write a 0555 folder
    python = Path(os.environ["MQI_TEST_REMOTE_PYTHON"])
    wrapper = Path("/tmp") / f"mqi-full-disk-{uuid.uuid4().hex[:8]}.sh"  # the cluster user must read it
    wrapper.write_text(f'#!/bin/bash\nmkdir -p results && chmod 555 results\nexec {python} "$@"\n')
    wrapper.chmod(0o755 | stat.S_IXOTH)
    config.write_text(config.read_text().replace(f"python: {python}", f"python: {wrapper}"))
    outcome = submit_json(config, small_case(tmp_path, "full"))
    try:
        poll_until_settled(config)
        case = status_of(config, outcome["case_id"])
        log = run_mqi("logs", outcome["case_id"], "--step", "post", "--config", str(config))
    finally:
        cancel_case_jobs(outcome["case_uid"])
        wrapper.unlink()
    assert case["status"] == "failed", case
    assert "without a summary" in case["error"] and "mqi logs" in case["error"]
    assert log.returncode == 0 and ("Permission denied" in log.stdout or "Read-only" in log.stdout), (
        log.stdout
    )
    assert not list(Path(case["results_dir"] or tmp_path / "none").glob("*.dcm"))
