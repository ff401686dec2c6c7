"""Operating at a site: retention on the real cluster, prepare/post in a CPU partition, and a
quiet `mqi run` when nothing is active."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mqi.testing.synthetic import build_case
from tests.helpers import cancel_case_jobs, run_mqi, submit_json

pytestmark = pytest.mark.cluster

RETAIN_NOTHING = {
    "remote_days": 0,
    "old_days": 0,
    "archive_after_days": 0,
    "keep_raw": False,
    "local_bundle": "delete-after-delivery",
}


def small_case(root: Path, name: str) -> Path:
    folder = root / name
    build_case(folder, ct_shape=(24, 24, 12), layers=2, spots_per_layer=9)
    return folder


def status_of(config: Path, case_id: str) -> dict:
    result = run_mqi("status", case_id, "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def poll_wait(config: Path) -> None:
    result = run_mqi("poll", "--wait", "--timeout", "240", "--config", str(config), timeout=300)
    assert result.returncode == 0, result.stderr


def test_clean_leaves_nothing_of_finished_cases_and_never_touches_an_active_one(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    standin = os.environ["MQI_TEST_STANDIN"]
    config = variant(make_config, "plain", retention=RETAIN_NOTHING)
    failing = variant(
        make_config, "failing", retention=RETAIN_NOTHING, moqui={"command": f"{standin} --fail-beams 2"}
    )
    held = variant(
        make_config, "held", retention=RETAIN_NOTHING, slurm={"extra_directives": ["--begin=now+600"]}
    )
    done = submit_json(config, small_case(tmp_path, "done"))
    failed = submit_json(failing, small_case(tmp_path, "failing"))
    poll_wait(config)
    forced = submit_json(config, small_case(tmp_path, "done"), "--force")  # sets the first upload aside
    assert forced["case_id"] == done["case_id"]
    poll_wait(config)
    active = submit_json(held, small_case(tmp_path, "active"))
    try:
        finished = status_of(config, done["case_id"])
        remote_root = Path(os.environ["MQI_TEST_LOCAL_DIR"]) / Path(yaml_remote(config)).name
        remote = remote_root / done["case_uid"]
        assert finished["status"] == "completed" and remote.is_dir()
        assert not list(remote.glob("beams/*/output")), "the post job removed the raw engine output"
        assert list(remote_root.glob(f"{done['case_uid']}.old-*")), (
            "submit --force set the first upload aside"
        )
        bundles = tmp_path / "state" / "bundles"
        assert not (bundles / done["case_uid"]).exists(), "the local bundle went after delivery"
        assert (bundles / active["case_uid"]).is_dir()

        planned = json.loads(run_mqi("clean", "--dry-run", "--json", "--config", str(config)).stdout)
        kinds = {(item["kind"], item["case_id"]) for item in planned["items"]}
        assert {("remote-folder", done["case_id"]), ("remote-folder", failed["case_id"])} <= kinds
        assert ("old-folder", None) in kinds and ("archive", done["case_id"]) in kinds
        assert planned["bytes_freed"] > 0 and remote.is_dir(), "a dry run removes nothing"
        assert active["case_id"] not in {item["case_id"] for item in planned["items"]}

        cleaned = run_mqi("clean", "--json", "--config", str(config))
        assert cleaned.returncode == 0, cleaned.stderr
        assert not remote.exists() and not list(remote_root.glob(f"{done['case_uid']}.old-*"))
        assert not (remote_root / failed["case_uid"]).exists()
        assert (remote_root / active["case_uid"]).is_dir(), "an active case is untouched"
        assert (bundles / active["case_uid"]).is_dir()
        archived = Path(status_of(config, done["case_id"])["results_dir"])
        assert archived == tmp_path / "results" / "archive" / f"{done['case_id']}.tar.gz"
        with tarfile.open(archived) as packed:
            names = {Path(name).name for name in packed.getnames()}
        assert {"RD.beam1.dcm", "RD.beam2.dcm", "RD.plan.dcm", "summary.json"} <= names
        assert not (tmp_path / "results" / done["case_id"]).exists()

        retried = run_mqi("retry", failed["case_id"], "--config", str(config))
        assert retried.returncode == 2
        assert retried.stderr.count("\n") == 1 and "folder on the cluster was removed" in retried.stderr
        again = json.loads(run_mqi("clean", "--json", "--config", str(config)).stdout)
        assert again["items"] == [], "nothing is cleaned twice"
    finally:
        for case in (done, failed, active):
            cancel_case_jobs(case["case_uid"])


def variant(make_config: Callable[..., Path], name: str, **overrides: object) -> Path:
    """A config of its own file (make_config writes one file per transport)."""
    made = make_config("local", **overrides)
    target = made.with_name(f"{name}.yaml")
    target.write_text(made.read_text())
    return target


def yaml_remote(config: Path) -> str:
    import yaml

    return yaml.safe_load(config.read_text())["cluster"]["remote_dir"]


def test_prepare_and_post_run_in_the_cpu_partition(make_config: Callable[..., Path], tmp_path: Path) -> None:
    cpu = os.environ.get("MQI_TEST_CPU_PARTITION")
    if not cpu:
        pytest.skip("the dev cluster has no CPU partition (scripts/dev-cluster.sh start adds one)")
    config = make_config(slurm={"cpu_partition": cpu})
    outcome = submit_json(config, small_case(tmp_path, "cpu"))
    try:
        poll_wait(config)
        ids = ",".join(outcome["jobs"][step] for step in ("prepare", "simulate", "post"))
        text = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", ids, "--format=JobID,JobName,Partition"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        cancel_case_jobs(outcome["case_uid"])
    partitions = {line.split("|")[1].rsplit(".", 1)[1]: line.split("|")[2] for line in text.splitlines()}
    assert partitions["prepare"] == partitions["post"] == cpu
    assert partitions["simulate"] == os.environ["MQI_TEST_PARTITION"]


def _rpcs(user: str) -> int:
    text = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    match = re.search(rf"^\s*{user}\s+\(\s*\d+\)\s+count:(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def test_mqi_run_on_an_idle_store_leaves_slurm_alone(make_config: Callable[..., Path]) -> None:
    config = make_config(poll={"interval_seconds": 1, "max_interval_seconds": 4})
    user = os.environ["MQI_TEST_SSH_USER"]
    before = _rpcs(user)
    service = subprocess.Popen(
        [sys.executable, "-m", "mqi", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(16)
    service.send_signal(signal.SIGTERM)
    output, _ = service.communicate(timeout=60)
    assert service.returncode == 0, output
    assert _rpcs(user) - before <= 16 / 4, "at most one Slurm query per poll.max_interval_seconds"
