"""Helpers for tests: paths, config files and running the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
APTG = SHARED_DATA / "aptg-plan03"


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_mqi(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mqi", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def submit_json(config: Path, case_dir: Path, *extra: str, timeout: float = 300) -> dict:
    """`mqi submit --json`; fails the test with mqi's stderr when it did not exit 0."""
    import json

    result = run_mqi("submit", str(case_dir), "--config", str(config), "--json", *extra, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def slurm_jobs(case_uid: str) -> dict[str, list]:
    """Every job of a case Slurm knows (squeue + sacct by name), by step, as JobRecords."""
    from datetime import timedelta

    from mqi import slurm
    from mqi.clock import now_utc

    since = now_utc() - timedelta(hours=6)
    text = subprocess.run(
        ["bash", "-c", slurm.squeue_command(all_users=True)], capture_output=True, text=True, check=True
    ).stdout
    records = slurm.parse_squeue(text)
    text = subprocess.run(
        ["bash", "-c", slurm.sacct_by_names_command(case_uid, since)], capture_output=True, text=True
    ).stdout
    records += slurm.parse_sacct(text)
    steps: dict[str, dict[str, Any]] = {step: {} for step in slurm.STEPS}
    for record in records:
        parsed = slurm.parse_job_name(record.name)
        if parsed and parsed[0] == case_uid:
            steps[parsed[1]].setdefault(record.parent_id, record)
    return {step: list(jobs.values()) for step, jobs in steps.items()}


def live_chains(case_uid: str) -> int:
    """How many chains of a case Slurm holds that were not cancelled (counted by post jobs)."""
    return sum(1 for record in slurm_jobs(case_uid)["post"] if not record.state.startswith("CANCELLED"))


def cancel_case_jobs(case_uid: str) -> None:
    """scancel every job of a case (tests clean the shared cluster up after themselves)."""
    ids = sorted({record.parent_id for records in slurm_jobs(case_uid).values() for record in records})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def resume_drained_nodes() -> None:
    """Resume a node Slurm drained or downed (as an admin would after a controller crash)."""
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True).stdout
    for line in states.splitlines():
        node, _, state = line.partition(" ")
        if state.startswith(("drain", "down")):
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)


class NodeKeeper:
    """While a test runs: resume any drained node every second, in a background thread.

    After slurmctld is killed with -9, slurmd may re-register a job the controller lost, and
    Slurm drains the node ("Duplicate jobid") seconds later, at a moment no test can predict.
    """

    def __init__(self) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            resume_drained_nodes()

    def __enter__(self) -> NodeKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        resume_drained_nodes()
