"""The dev cluster itself: GPUs as gres, arrays, accounting with comments."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from mqi import slurm
from mqi.clock import now_utc

pytestmark = pytest.mark.cluster


def sh(command: str, cwd: Path | None = None) -> str:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, check=True).stdout


def wait_finished(job_id: str, tasks: int, timeout: float = 90) -> dict[str, slurm.JobRecord]:
    since = now_utc()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (command,) = slurm.sacct_commands([job_id], since.replace(hour=0, minute=0))
        records = slurm.latest_by_job(slurm.parse_sacct(sh(command)))
        if len(records) == tasks and all(slurm.phase_of(r)[0] in slurm.TERMINAL for r in records.values()):
            return records
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")


def test_gpu_array_tasks_each_get_their_own_gpu(cluster: dict[str, str], tmp_path: Path, unique: str) -> None:
    script = tmp_path / "gpu.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --gres=gpu:1 --array=0-3 -J mqi.{unique}.simulate --comment=mqi:{unique}\n"
        f"#SBATCH -p {cluster['MQI_TEST_PARTITION']} -o {tmp_path}/task-%a.out\n"
        'echo "$CUDA_VISIBLE_DEVICES"\n'
        "sleep 3\n"
    )
    job_id = slurm.parse_sbatch_parsable(sh(f"sbatch --parsable {script}", cwd=tmp_path))
    time.sleep(2)
    running = [r for r in slurm.parse_squeue(sh(slurm.squeue_command())) if r.parent_id == job_id]
    assert sum(r.state == "RUNNING" for r in running) == 4, "four GPU tasks must run at once"
    records = wait_finished(job_id, tasks=4)
    assert {r.state for r in records.values()} == {"COMPLETED"}
    assert {r.comment for r in records.values()} == {f"mqi:{unique}"}
    devices = {(tmp_path / f"task-{i}.out").read_text().strip() for i in range(4)}
    assert devices == {"0", "1", "2", "3"}
