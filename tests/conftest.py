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


# Which dev-cluster flavour the cluster tests run against: Debian's 22.05 (default) or the
# 25.11 built from the vendored source (`MQI_SLURM=25.11 scripts/dev-cluster.sh install`).
SLURM_FLAVOUR = os.environ.get("MQI_SLURM", "22.05")


def _load_cluster_env() -> tuple[dict[str, str] | None, str]:
    """The chosen flavour's variables, or None and why: from the environment when it was
    exported for this flavour, else from ``dev-cluster.sh env``."""
    exported_for = os.environ.get("MQI_TEST_SLURM_VERSION", "22.05")
    if all(os.environ.get(name) for name in CLUSTER_VARS) and exported_for == SLURM_FLAVOUR:
        return {name: os.environ[name] for name in os.environ if name.startswith("MQI_")}, ""
    script = ROOT / "scripts" / "dev-cluster.sh"
    try:
        proc = subprocess.run(
            [str(script), "env"],
            capture_output=True,
            text=True,
            env={**os.environ, "MQI_SLURM": SLURM_FLAVOUR},
        )
    except OSError as err:
        return None, f"dev-cluster.sh env failed: {err}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        last = last.removeprefix("[dev-cluster] ").removeprefix("ERROR: ")
        return None, f"Slurm {SLURM_FLAVOUR} dev cluster unavailable: {last}"
    env = {}
    for line in proc.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            if key != "PATH":  # "$BIN:$PATH": applied from MQI_TEST_SLURM_BIN below
                env[key] = value
    return env, ""


def _apply_cluster_env(env: dict[str, str]) -> None:
    """Put the flavour's client commands first on PATH and its slurm.conf in SLURM_CONF, for the
    tests' own sinfo/squeue calls and for mqi's local transport (it runs commands through bash)."""
    os.environ.update(env)
    slurm_bin = env.get("MQI_TEST_SLURM_BIN")
    if slurm_bin and os.environ.get("PATH", "").split(os.pathsep)[0] != slurm_bin:
        os.environ["PATH"] = slurm_bin + os.pathsep + os.environ.get("PATH", "")


_CLUSTER_ENV: tuple[dict[str, str] | None, str] | None = None


def cluster_env() -> tuple[dict[str, str] | None, str]:
    """Loaded once per session, and applied to os.environ when the flavour is there."""
    global _CLUSTER_ENV
    if _CLUSTER_ENV is None:
        _CLUSTER_ENV = _load_cluster_env()
        if _CLUSTER_ENV[0] is not None and SLURM_FLAVOUR != "22.05":
            _apply_cluster_env(_CLUSTER_ENV[0])
    return _CLUSTER_ENV


def pytest_configure(config: pytest.Config) -> None:
    if SLURM_FLAVOUR != "22.05":
        # Before any fixture calls sinfo/scontrol: they must reach this flavour's cluster.
        cluster_env()


def pytest_report_header(config: pytest.Config) -> str:
    return f"Slurm dev-cluster flavour: {SLURM_FLAVOUR} (MQI_SLURM)"


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    """The dev cluster of the chosen flavour, or a skip saying how to get it."""
    env, why = cluster_env()
    if env is None:
        pytest.skip(why or "no Slurm here: run `scripts/test.sh` (or scripts/dev-cluster.sh start)")
    _apply_cluster_env(env)
    if shutil.which("sinfo") is None:
        pytest.skip("no Slurm here: run `scripts/test.sh` (or scripts/dev-cluster.sh start)")
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if probe.returncode != 0:
        start = (
            "MQI_SLURM=25.11 scripts/dev-cluster.sh start"
            if SLURM_FLAVOUR != "22.05"
            else ("scripts/dev-cluster.sh start")
        )
        pytest.skip(f"the Slurm {SLURM_FLAVOUR} dev cluster is not running: {start}")
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
