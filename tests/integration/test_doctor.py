"""`mqi doctor` against the real cluster, over SSH and locally, and each way it fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_mqi

pytestmark = pytest.mark.cluster


def doctor(config: Path, *extra: str) -> tuple[int, dict, str]:
    result = run_mqi("doctor", "--config", str(config), "--json", *extra, timeout=180)
    return result.returncode, json.loads(result.stdout), result.stderr


def failed(report: dict) -> dict[str, str]:
    return {check["name"]: check["detail"] for check in report["checks"] if not check["ok"]}


@pytest.mark.parametrize("transport", ["ssh", "local"])
def test_doctor_passes(make_config: Callable[..., Path], transport: str) -> None:
    code, report, _ = doctor(make_config(transport))
    assert failed(report) == {}
    assert code == 0
    names = [check["name"] for check in report["checks"]]
    assert {"connection", "partition", "sacct accounting", "remote python"} <= set(names)


def test_doctor_refuses_a_wrong_host_key(make_config: Callable[..., Path], tmp_path: Path) -> None:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    port = os.environ["MQI_TEST_SSH_PORT"]
    known.write_text(
        f"[127.0.0.1]:{port} " + " ".join(other.with_suffix(".pub").read_text().split()[:2]) + "\n"
    )
    code, report, _ = doctor(make_config(cluster={"known_hosts": str(known)}))
    assert code == 1
    assert "does NOT match" in failed(report)["connection"]


def test_doctor_refuses_an_unknown_host(make_config: Callable[..., Path], tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    code, report, _ = doctor(make_config(cluster={"known_hosts": str(known)}))
    assert code == 1
    assert "is not in" in failed(report)["connection"]
    port = os.environ["MQI_TEST_SSH_PORT"]
    assert f"ssh-keyscan -p {port} 127.0.0.1 >> {known}" in failed(report)["connection"]


def test_doctor_names_a_closed_port_and_an_unknown_host(make_config: Callable[..., Path]) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    code, report, stderr = doctor(make_config(cluster={"port": closed}))
    assert code == 1 and "Traceback" not in stderr
    assert f"cannot connect to mqitest@127.0.0.1:{closed}" in failed(report)["connection"]
    assert "is sshd running and the port right?" in failed(report)["connection"]
    code, report, stderr = doctor(make_config(cluster={"host": "no-such-host.invalid"}))
    assert code == 1 and "Traceback" not in stderr
    assert "'no-such-host.invalid' is unknown: check cluster.host" in failed(report)["connection"]


def test_doctor_job_runs_a_gpu_job_and_flags_a_readable_workspace(
    make_config: Callable[..., Path], cluster: dict[str, str]
) -> None:
    config = make_config("local")
    code, report, _ = doctor(config, "--job")
    assert code == 0, failed(report)
    details = {check["name"]: check["detail"] for check in report["checks"]}
    assert "CUDA_VISIBLE_DEVICES=" in details["test GPU job"]
    workspace = Path(yaml.safe_load(config.read_text())["cluster"]["remote_dir"])
    workspace.chmod(0o755)
    code, report, _ = doctor(config)
    assert code == 1 and "chmod 700" in failed(report)["workspace private"]


def test_doctor_flags_a_placeholder_host_and_missing_folders(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config(cluster={"host": "login.example.org"}, watch_dir=str(tmp_path / "nowhere"))
    (tmp_path / "nowhere").rmdir()
    code, report, _ = doctor(config)
    assert code == 1
    problems = failed(report)
    assert "placeholder" in problems["cluster host"]
    assert "does not exist" in problems["watch_dir"] and "results_dir" not in problems


def test_doctor_reports_a_wrong_key(make_config: Callable[..., Path], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    code, report, _ = doctor(make_config(cluster={"key_file": str(wrong)}))
    assert code == 1
    assert "authentication" in failed(report)["connection"]


def test_doctor_reports_a_closed_port(make_config: Callable[..., Path]) -> None:
    code, report, _ = doctor(make_config(cluster={"port": 2299, "connect_timeout": 3}))
    assert code == 1
    assert "cannot connect" in failed(report)["connection"]


def test_doctor_reports_a_missing_partition(make_config: Callable[..., Path]) -> None:
    code, report, _ = doctor(make_config(slurm={"partition": "nosuchpartition"}))
    assert code == 1
    problems = failed(report)
    assert list(problems) == ["partition"]
    assert "does not exist" in problems["partition"]


def test_doctor_without_config_says_how_to_make_one(tmp_path: Path) -> None:
    result = run_mqi("doctor", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "mqi init" in result.stderr
    assert "Traceback" not in result.stderr
