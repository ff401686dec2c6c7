"""The dev cluster's settings for the benchmarks (scripts/dev-cluster.sh env)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_VARS = (
    "MQI_TEST_SSH_HOST",
    "MQI_TEST_SSH_PORT",
    "MQI_TEST_SSH_USER",
    "MQI_TEST_SSH_KEY",
    "MQI_TEST_KNOWN_HOSTS",
    "MQI_TEST_REMOTE_DIR",
    "MQI_TEST_PARTITION",
)


def cluster_env() -> dict[str, str]:
    """MQI_TEST_* variables: from the environment, else from scripts/dev-cluster.sh env."""
    if all(os.environ.get(name) for name in CLUSTER_VARS):
        return {k: v for k, v in os.environ.items() if k.startswith("MQI_")}
    script = ROOT / "scripts" / "dev-cluster.sh"
    try:
        text = subprocess.run([str(script), "env"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(
            f"cannot read the dev cluster's settings ({error}): scripts/dev-cluster.sh start"
        ) from None
    env = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value
    missing = [name for name in CLUSTER_VARS if not env.get(name)]
    if missing:
        raise SystemExit(f"dev-cluster.sh env lacks {missing}: scripts/dev-cluster.sh start")
    return env


def ssh_cluster(env: dict[str, str], remote_dir: str) -> dict[str, Any]:
    """The ``cluster`` config section for SSH to the dev cluster's sshd."""
    return {
        "transport": "ssh",
        "host": env["MQI_TEST_SSH_HOST"],
        "port": int(env["MQI_TEST_SSH_PORT"]),
        "user": env["MQI_TEST_SSH_USER"],
        "key_file": env["MQI_TEST_SSH_KEY"],
        "known_hosts": env["MQI_TEST_KNOWN_HOSTS"],
        "ssh_config": None,
        "remote_dir": remote_dir,
        "retry_seconds": 0,
    }
