"""`mqi submit` against the real cluster: the chain, exactly once, and surviving failures."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import yaml

from mqi import slurm
from mqi.intake.identity import case_uid
from mqi.testing.synthetic import build_case
from tests.helpers import APTG, ROOT, cancel_case_jobs, live_chains, run_mqi, slurm_jobs, submit_json

pytestmark = pytest.mark.cluster

# Jobs that wait 10 minutes before they may start: visible in squeue with their
# dependencies, cheap for the cluster, and cancelled at the end of each test.
HELD = {"extra_directives": ["--begin=now+600"]}


@pytest.fixture
def submitted_uids() -> Iterator[list[str]]:
    uids: list[str] = []
    yield uids
    for uid in uids:
        cancel_case_jobs(uid)


def small_case(root: Path, name: str, **kwargs: object) -> Path:
    folder = root / name
    build_case(folder, ct_shape=(32, 32, 20), layers=2, spots_per_layer=9, **kwargs)
    return folder


def dev(*args: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "dev-cluster.sh"), *args], check=True, capture_output=True)


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed daemon may never be reaped here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def stop_daemon(name: str) -> None:
    pid = int((Path(os.environ["MQI_DEV_DIR"]) / "run" / f"{name}.pid").read_text().strip())
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not running(pid):
            return
        time.sleep(0.1)


@pytest.mark.parametrize("transport", ["ssh", "local"])
def test_aptg_case_queues_the_chain_and_completes(
    make_config: Callable[..., Path], transport: str, submitted_uids: list[str]
) -> None:
    if not APTG.is_dir():
        pytest.skip(f"shared data not found at {APTG}")
    config = make_config(
        transport,
        intake={"allow_patient_id_mismatch": True},
        slurm={"extra_directives": ["--begin=now+3"]},
    )
    outcome = submit_json(config, APTG)
    uid = outcome["case_uid"]
    submitted_uids.append(uid)
    jobs = outcome["jobs"]
    assert outcome["status"] == "submitted" and all(jobs.values())

    queued = {
        r.job_id: r
        for r in slurm.parse_squeue(
            subprocess.run(
                ["bash", "-c", slurm.squeue_command(all_users=True)], capture_output=True, text=True
            ).stdout
        )
    }
    simulate = [r for r in queued.values() if r.parent_id == jobs["simulate"]]
    assert len(simulate) == 2, "one array task per beam"
    assert all(r.dependency and f"afterok:{jobs['prepare']}" in r.dependency for r in simulate)
    post = queued[jobs["post"]]
    assert post.dependency and f"afterany:{jobs['simulate']}" in post.dependency
    for step in slurm.STEPS:
        records = [r for r in queued.values() if r.parent_id == jobs[step]]
        assert {r.name for r in records} == {f"mqi.{uid}.{step}"}
        assert {r.comment for r in records} == {f"mqi:{uid}"}

    result = run_mqi("poll", "--wait", "--timeout", "240", "--config", str(config), timeout=300)
    assert result.returncode == 0, result.stderr
    status = json.loads(run_mqi("status", outcome["case_id"], "--config", str(config), "--json").stdout)
    assert status["status"] == "completed", status
    assert [b["status"] for b in status["beams"]] == ["completed", "completed"]
    results = Path(status["results_dir"])
    names = sorted(p.name for p in results.glob("*.dcm"))
    assert names == ["RD.beam1.dcm", "RD.beam2.dcm", "RD.plan.dcm"]
    plan = pydicom.dcmread(results / "RD.plan.dcm")
    assert plan.DoseSummationType == "PLAN" and plan.Modality == "RTDOSE"
    assert (plan.Rows, plan.Columns, plan.NumberOfFrames) == (128, 128, 61)


def test_resubmitting_is_a_no_op_until_forced(
    make_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = make_config(slurm=HELD)
    case = small_case(tmp_path, "Resubmit Me")
    first = submit_json(config, case)
    submitted_uids.append(first["case_uid"])
    again = submit_json(config, case)
    assert again["already_submitted"] is True and again["jobs"] == first["jobs"]
    assert live_chains(first["case_uid"]) == 1
    forced = submit_json(config, case, "--force")
    assert forced["jobs"]["post"] != first["jobs"]["post"]
    assert live_chains(first["case_uid"]) == 1, "--force cancels the old chain"


def test_a_rejected_case_never_reaches_slurm(make_config: Callable[..., Path], tmp_path: Path) -> None:
    config = make_config()
    case = small_case(tmp_path, "Broken")
    next(case.glob("RP*.dcm")).unlink()
    result = run_mqi("submit", str(case), "--config", str(config))
    assert result.returncode == 2
    assert "rejected" in result.stderr and "Traceback" not in result.stderr
    status = json.loads(run_mqi("status", "--config", str(config), "--json").stdout)
    assert [c["status"] for c in status] == ["rejected"]
    assert status[0]["errors"], "the problems are kept with the case"
    assert all(not jobs for jobs in slurm_jobs(status[0]["case_uid"]).values())


def test_sigkill_at_random_moments_never_submits_twice(
    make_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = make_config(slurm=HELD)
    rng = random.Random(20261122)
    started = time.monotonic()
    timing = submit_json(config, small_case(tmp_path, "Timing"))
    submitted_uids.append(timing["case_uid"])
    duration = time.monotonic() - started
    for attempt in range(12):
        case = small_case(tmp_path, f"Crash {attempt}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mqi", "submit", str(case), "--config", str(config), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0.05, duration))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        outcome = submit_json(config, case)
        submitted_uids.append(outcome["case_uid"])
        assert live_chains(outcome["case_uid"]) == 1, f"attempt {attempt}: one chain in Slurm"
        jobs = slurm_jobs(outcome["case_uid"])
        live = {r.parent_id for step in jobs.values() for r in step if not r.state.startswith("CANCELLED")}
        assert live == set(outcome["jobs"].values()), f"attempt {attempt}: the store names Slurm's chain"
        status = json.loads(run_mqi("status", outcome["case_id"], "--config", str(config), "--json").stdout)
        assert status["status"] == "submitted"
        assert {j["job_id"] for j in status["jobs"] if not j["finished"]} == live


def test_slurmctld_down_then_back(
    make_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = make_config(slurm=HELD, cluster={"retry_seconds": 6})
    case = small_case(tmp_path, "Outage")
    stop_daemon("slurmctld")
    try:
        result = run_mqi("submit", str(case), "--config", str(config), timeout=120)
    finally:
        dev("start")
    assert result.returncode == 1, result.stderr
    assert "gave up" in result.stderr and "Traceback" not in result.stderr
    status = json.loads(run_mqi("status", "--config", str(config), "--json").stdout)
    assert status[0]["status"] == "submitting", "the case stays resumable"
    outcome = submit_json(config, case)
    submitted_uids.append(outcome["case_uid"])
    assert live_chains(outcome["case_uid"]) == 1


def test_sshd_dropped_mid_upload_resumes_without_a_partial_submit(
    make_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = make_config(slurm=HELD, cluster={"retry_seconds": 3, "connect_timeout": 2})
    case = tmp_path / "Large"
    build_case(case, ct_shape=(512, 512, 200), layers=2, spots_per_layer=9)
    workspace = Path(yaml.safe_load(config.read_text())["cluster"]["remote_dir"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqi", "submit", str(case), "--config", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline and not partial:
        partial = [p for p in workspace.glob("*.partial/input") if len(list(p.iterdir())) >= 5]
        time.sleep(0.005)
    assert partial, "the upload never started"
    try:
        # Cut the link at once: the listening sshd first (no reconnect), then this session.
        sshd_pid = (Path(os.environ["MQI_DEV_DIR"]) / "run" / "sshd.pid").read_text().strip()
        sessions = subprocess.run(["pgrep", "-P", sshd_pid], capture_output=True, text=True).stdout.split()
        os.kill(int(sshd_pid), signal.SIGKILL)
        for session in sessions:  # only this sshd's sessions: another flavour's stay up
            subprocess.run(["pkill", "-KILL", "-P", session], capture_output=True)
            subprocess.run(["kill", "-KILL", session], capture_output=True)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, stderr
        final = partial[0].parent.with_suffix("")
        assert not final.exists(), "a half-uploaded case must never become submittable"
    finally:
        dev("start")
    outcome = submit_json(config, case)
    submitted_uids.append(outcome["case_uid"])
    assert outcome["upload"]["files_skipped"] > 0, "files already there are not sent again"
    assert live_chains(outcome["case_uid"]) == 1


def test_twenty_cases_from_four_processes(
    make_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = make_config(slurm=HELD)
    cases = [small_case(tmp_path / "incoming", f"Case {i:02d}") for i in range(20)]
    script = (
        "import subprocess, sys\n"
        "bad = 0\n"
        "for case in sys.argv[2:]:\n"
        "    r = subprocess.run([sys.executable, '-m', 'mqi', 'submit', case, '--config', sys.argv[1]],"
        " capture_output=True, text=True)\n"
        "    sys.stderr.write(r.stderr)\n"
        "    bad += r.returncode != 0\n"
        "sys.exit(bad)\n"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(config), *map(str, cases[i::4])],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    errors = [worker.communicate(timeout=600)[1] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), errors
    assert not any("locked" in text for text in errors)
    status = json.loads(run_mqi("status", "--config", str(config), "--json").stdout)
    submitted_uids.extend(case["case_uid"] for case in status)
    assert len(status) == 20 and {case["status"] for case in status} == {"submitted"}
    assert all(live_chains(case["case_uid"]) == 1 for case in status)


def remote_workspace(config: Path) -> Path:
    """The config's cluster.remote_dir (the dev cluster's sshd runs on this machine)."""
    return Path(yaml.safe_load(config.read_text())["cluster"]["remote_dir"])


def second_store(config: Path, state_dir: Path) -> Path:
    """The same cluster and remote folder from another workstation (its own store)."""
    data = yaml.safe_load(config.read_text())
    data["state_dir"] = str(state_dir)
    other = config.with_name(f"{config.stem}-elsewhere.yaml")
    other.write_text(yaml.safe_dump(data))
    return other


@pytest.mark.parametrize("transport", ["ssh", "local"])
def test_a_store_that_never_saw_a_live_chain_adopts_it_and_leaves_no_upload_behind(
    make_config: Callable[..., Path], transport: str, tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = make_config(transport, slurm=HELD)
    case = small_case(tmp_path, "Two Stores")
    first = submit_json(config, case)
    submitted_uids.append(first["case_uid"])
    again = submit_json(second_store(config, tmp_path / "state-elsewhere"), case)
    assert again["adopted"] is True and again["jobs"] == first["jobs"]
    assert live_chains(first["case_uid"]) == 1
    left = sorted(p.name for p in remote_workspace(config).iterdir())
    assert left == [first["case_uid"]], "the second store's upload is removed, the chain's bundle kept"


@pytest.mark.parametrize("transport", ["ssh", "local"])
def test_a_folder_already_under_the_case_name_is_refreshed_before_it_is_submitted(
    make_config: Callable[..., Path], transport: str, tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = make_config(transport, slurm=HELD)
    case = small_case(tmp_path, "Left Behind")
    uid = case_uid(case, pydicom.dcmread(next(case.glob("RP*.dcm"))).SOPInstanceUID)
    workspace = remote_workspace(config)
    # An upload from elsewhere that was never submitted, with a submit script that fails.
    stale = workspace / uid
    (stale / "jobs").mkdir(parents=True)
    (stale / "jobs" / "submit.sh").write_text("echo 'the old submit.sh ran' >&2; exit 3\n")
    owner = workspace.parent.stat()
    for path in [workspace, stale, stale / "jobs", stale / "jobs" / "submit.sh"]:
        os.chown(path, owner.st_uid, owner.st_gid)
    outcome = submit_json(config, case)
    submitted_uids.append(uid)
    assert outcome["case_uid"] == uid and outcome["status"] == "submitted"
    assert live_chains(uid) == 1
    bundle = yaml.safe_load(config.read_text())["state_dir"]
    rendered = Path(bundle) / "bundles" / uid / "jobs" / "submit.sh"
    assert (stale / "jobs" / "submit.sh").read_bytes() == rendered.read_bytes(), "the stale file was replaced"
    assert sorted(p.name for p in workspace.iterdir()) == [uid], "no upload is left beside it"
