"""Record what pyslurm and the commands say about the same jobs at the same moment (Slurm 25.11).

    eval "$(MQI_SLURM=25.11 scripts/dev-cluster.sh env)"
    .venv/bin/python tests/unit/recorded/record_pyslurm.py tests/unit/recorded/25.11/pyslurm

Submits a small scenario (a job exiting 134, one killed by SIGSEGV, an array whose tasks exit
0-3 under a throttle, a job waiting on it, a held array, a cancelled job), waits until the
quick ones have ended but slurmctld still holds them (MinJobAge), then writes in one go:
``ctld.json`` (the ``pyslurm.Job`` attributes the backend reads), ``db.json`` (raw rows of
``pyslurm.slurmdb_jobs().get()``), ``db_objects.json`` (``pyslurm.db.Job`` attributes),
``squeue.txt`` and ``sacct.txt`` (mqi's own command lines), and ``ids.json``. The jobs are
cancelled at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from mqi import slurm  # noqa: E402
from mqi.clock import now_utc  # noqa: E402

CTLD_FIELDS = (
    "id",
    "array_id",
    "array_task_id",
    "array_tasks_waiting",
    "name",
    "state",
    "state_reason",
    "allocated_nodes",
    "submit_time",
    "start_time",
    "comment",
    "dependencies",
    "user_id",
)
DB_FIELDS = (
    "id",
    "array_id",
    "array_task_id",
    "array_tasks_waiting",
    "name",
    "state",
    "state_reason",
    "exit_code",
    "exit_code_signal",
    "nodelist",
    "submit_time",
    "start_time",
    "end_time",
    "comment",
    "cancelled_by",
)
ROW_FIELDS = (
    "jobid",
    "array_job_id",
    "array_task_id",
    "array_task_str",
    "jobname",
    "state_str",
    "exitcode",
    "requid",
    "nodes",
    "submit",
    "start",
    "end",
    "derived_es",
)


def sbatch(*args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def main() -> None:
    import pyslurm

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    since = now_utc() - timedelta(minutes=1)
    o = "--output=/dev/null"
    ids = {
        "exit134": sbatch(
            "-p", "cpu", "-J", "mqi.recpy.post", "--comment=mqi:recpy", o, "--wrap", "exit 134"
        ),
        "segv": sbatch("-p", "cpu", "-J", "rec.segv", o, "--wrap", "kill -SEGV $$"),
    }
    ids["array"] = sbatch(
        "-p", "gpu", "-J", "mqi.recpy.simulate", "--array=0-3%2", "--gres=gpu:1", o,
        "--wrap", "sleep 1; exit $SLURM_ARRAY_TASK_ID",
    )  # fmt: skip
    ids["after"] = sbatch(
        "-p", "cpu", "-J", "rec.after", f"--dependency=afterany:{ids['array']}", "--begin=now+600", o,
        "--wrap", "true",
    )  # fmt: skip
    ids["held"] = sbatch(
        "-H", "-p", "gpu", "-J", "rec.held", "--array=0-2%1", "--gres=gpu:1", o, "--wrap", "true"
    )
    ids["cancelled"] = sbatch("-p", "cpu", "-J", "rec.cancelled", o, "--wrap", "sleep 100")
    time.sleep(2)
    subprocess.run(["scancel", ids["cancelled"]], check=True)
    time.sleep(4)  # the array's tasks have run; slurmctld keeps ended jobs MinJobAge (10 s here)
    every = sorted(ids.values(), key=int)
    wanted = set(every)
    jobs = pyslurm.Jobs.load()
    ctld = [
        {field: getattr(job, field) for field in CTLD_FIELDS}
        for job in jobs.values()
        if str(job.array_id or job.id) in wanted
    ]
    squeue = subprocess.run(["bash", "-c", slurm.squeue_command()], capture_output=True, text=True).stdout
    rows = pyslurm.slurmdb_jobs().get(
        jobids=every,
        starttime=b"now-3600",
        flags=pyslurm.JOBCOND_FLAG_NO_STEP | pyslurm.JOBCOND_FLAG_NO_TRUNC,
    )
    (sacct_command,) = slurm.sacct_commands(every, since)
    sacct = subprocess.run(["bash", "-c", sacct_command], capture_output=True, text=True).stdout
    objects = pyslurm.db.Jobs.load(pyslurm.db.JobFilter(ids=[int(i) for i in every], start_time="now-3600"))
    db_objects = [{field: getattr(job, field) for field in DB_FIELDS} for job in objects.values()]
    subprocess.run(["scancel", *every], check=False)
    (out / "ids.json").write_text(json.dumps(ids, indent=1) + "\n")
    (out / "ctld.json").write_text(json.dumps(ctld, indent=1) + "\n")
    (out / "db.json").write_text(
        json.dumps([{f: row[f] for f in ROW_FIELDS} for row in rows.values()], indent=1) + "\n"
    )
    (out / "db_objects.json").write_text(json.dumps(db_objects, indent=1) + "\n")
    lines = [line for line in squeue.splitlines() if slurm.parent_id(line.split("|")[0]) in wanted]
    (out / "squeue.txt").write_text("\n".join(lines) + "\n")
    (out / "sacct.txt").write_text(sacct)


if __name__ == "__main__":
    main()
