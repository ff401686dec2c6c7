"""Shared fixtures: the real dev cluster (scripts/dev-cluster.sh) and configs pointing at it."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, write_config

CLUSTER_VARS = (
    "MQI_TEST_SSH_HOST",
    "MQI_TEST_SSH_PORT",
    "MQI_TEST_SSH_USER",
    "MQI_TEST_SSH_KEY",
    "MQI_TEST_KNOWN_HOSTS",
    "MQI_TEST_REMOTE_DIR",
    "MQI_TEST_PARTITION",
)


def _load_cluster_env() -> dict[str, str] | None:
    """The dev cluster's variables: from the environment, else from dev-cluster.sh env."""
    if all(os.environ.get(name) for name in CLUSTER_VARS):
        return {name: os.environ[name] for name in os.environ if name.startswith("MQI_")}
    script = ROOT / "scripts" / "dev-cluster.sh"
    try:
        text = subprocess.run([str(script), "env"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    env = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    """The dev cluster, or a skip saying how to start it."""
    env = _load_cluster_env()
    if shutil.which("sinfo") is None or env is None:
        pytest.skip("no Slurm here: run `scripts/test.sh` (or scripts/dev-cluster.sh start)")
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the dev cluster is not running: scripts/dev-cluster.sh start")
    os.environ.update(env)
    return env


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def make_config(tmp_path: Path, cluster: dict[str, str], unique: str) -> Callable[..., Path]:
    """Write an mqi.yaml for the dev cluster; transport 'ssh' or 'local'; overrides merged in."""

    def make(transport: str = "ssh", **overrides: Any) -> Path:
        remote_root = cluster["MQI_TEST_REMOTE_DIR"] if transport == "ssh" else cluster["MQI_TEST_LOCAL_DIR"]
        data: dict[str, Any] = {
            "watch_dir": str(tmp_path / "incoming"),
            "results_dir": str(tmp_path / "results"),
            "state_dir": str(tmp_path / "state"),
            "readiness": {"quiet_seconds": 0},
            "cluster": {
                "transport": transport,
                "remote_dir": f"{remote_root}/t-{unique}",
                "python": cluster["MQI_TEST_REMOTE_PYTHON"],
                "retry_seconds": 20,
            },
            "slurm": {
                "partition": cluster["MQI_TEST_PARTITION"],
                "time_limit": "00:10:00",
                "mem_per_beam": None,
                "post_mem": None,
            },
            "moqui": {"command": cluster["MQI_TEST_STANDIN"]},
            "poll": {"interval_seconds": 1, "lost_grace_seconds": 20},
        }
        if transport == "ssh":
            data["cluster"].update(
                host=cluster["MQI_TEST_SSH_HOST"],
                port=int(cluster["MQI_TEST_SSH_PORT"]),
                user=cluster["MQI_TEST_SSH_USER"],
                key_file=cluster["MQI_TEST_SSH_KEY"],
                known_hosts=cluster["MQI_TEST_KNOWN_HOSTS"],
                ssh_config=None,
            )
        for section, values in overrides.items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        for folder in ("watch_dir", "results_dir"):  # a site has made these before it runs mqi
            Path(data[folder]).mkdir(parents=True, exist_ok=True)
        return write_config(tmp_path / f"mqi-{transport}.yaml", data)

    return make
