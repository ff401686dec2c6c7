"""pyslurm against the command line on the Slurm 25.11 dev cluster, with 200 jobs queued.

    MQI_SLURM=25.11 scripts/dev-cluster.sh start && MQI_SLURM=25.11 scripts/dev-cluster.sh pyslurm
    .venv/bin/python bench/pyslurm_probe.py [--jobs 200] [--repeat 7]

Prints medians of ``--repeat`` calls (after one warm-up) of:
- ``pyslurm.Jobs.load()`` (slurmctld, every job) against mqi's squeue command
  (``slurm.squeue_command()``, one process through bash, as the local transport runs it);
- ``pyslurm.db.Jobs.load(JobFilter(ids=...))`` (slurmdbd) against mqi's sacct command over the
  same ids and ``-S`` bound (``slurm.sacct_commands``).
The jobs are held (``sbatch -H``), so they cost nothing; they are scancelled at the end.
It runs as the user that submits (root on the dev cluster), and counts what each side found
so that both answers are seen to cover the same jobs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mqi import slurm  # noqa: E402


def use_slurm_25_11() -> dict[str, str]:
    """The 25.11 flavour's PATH and SLURM_CONF in this process (pyslurm reads SLURM_CONF on import)."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "dev-cluster.sh"), "env"],
        capture_output=True,
        text=True,
        env={**os.environ, "MQI_SLURM": "25.11"},
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["dev-cluster.sh env failed"])[-1]
        raise SystemExit(f"the Slurm 25.11 dev cluster is not there: {last}")
    env = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key != "PATH":
            env[key] = value
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    os.environ["PATH"] = env["MQI_TEST_SLURM_BIN"] + os.pathsep + os.environ["PATH"]
    return env


def median_ms(call: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    result = call()  # warm-up, and the answer to count
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def bash(command: str) -> str:
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{command[:60]}... failed: {proc.stderr.strip()[:200]}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = use_slurm_25_11()
    try:
        import pyslurm
    except ImportError as error:
        raise SystemExit(
            f"pyslurm is not importable ({error}): MQI_SLURM=25.11 scripts/dev-cluster.sh pyslurm"
        ) from None

    since = slurm.utc_now() - timedelta(minutes=1)
    tag = f"mqi.probe{os.getpid()}"
    ids = []
    try:
        start = time.perf_counter()
        for i in range(args.jobs):
            out = bash(
                f"sbatch --parsable -H -p {env['MQI_TEST_PARTITION']} -J {tag}.{i} -o /dev/null --wrap true"
            )
            ids.append(slurm.parse_sbatch_parsable(out))
        print(
            f"submitted {len(ids)} held jobs in {time.perf_counter() - start:.1f}s (ids {ids[0]}-{ids[-1]})"
        )
        time.sleep(6)  # slurmdbd learns of new jobs a few seconds late
        int_ids = [int(job_id) for job_id in ids]
        (sacct_command,) = slurm.sacct_commands(ids, since)
        squeue_command = slurm.squeue_command()

        rows = [
            ("pyslurm.Jobs.load()", lambda: pyslurm.Jobs.load()),
            ("squeue (mqi's command)", lambda: bash(squeue_command)),
            (
                "pyslurm.db.Jobs.load(ids)",
                lambda: pyslurm.db.Jobs.load(pyslurm.db.JobFilter(ids=int_ids)),
            ),
            ("sacct -j ids (mqi's command)", lambda: bash(sacct_command)),
        ]
        api = ".".join(str(part) for part in pyslurm.slurm_api_version())
        print(f"pyslurm {pyslurm.__version__} (libslurm API {api}) from {Path(pyslurm.__file__).parent}")
        print(f"{'call':32} {'median ms':>10} {'jobs seen':>10}   ({args.repeat} calls after a warm-up)")
        figures = {}
        for name, call in rows:
            ms, result = median_ms(call, args.repeat)
            if isinstance(result, str):
                parse = slurm.parse_squeue if name.startswith("squeue") else slurm.parse_sacct
                seen = sum(1 for record in parse(result) if record.job_id in set(ids))
            else:
                seen = sum(1 for job_id in result if str(job_id) in set(ids))
            figures[name] = ms
            print(f"{name:32} {ms:10.1f} {seen:10d}")
        ctld = figures["pyslurm.Jobs.load()"] / figures["squeue (mqi's command)"]
        dbd = figures["pyslurm.db.Jobs.load(ids)"] / figures["sacct -j ids (mqi's command)"]
        print(f"ratio pyslurm/command: slurmctld {ctld:.2f}, slurmdbd {dbd:.2f}")
    finally:
        if ids:
            bash(slurm.scancel_command(ids))


if __name__ == "__main__":
    main()
