"""Several real mqi processes writing one database at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mqi.store import Store

WORKERS = 4
CASES = 100

# Each worker opens the (possibly not yet created) database, then per case runs one
# submit-like transaction and one poll-like transaction; the latter also bumps a
# counter shared by all workers with a read-modify-write (lost updates would show).
WORKER = """
import sys, time
from pathlib import Path
from mqi.store import Store

path, worker, cases, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
with Store(path) as store:
    store.upsert_case("shared", case_uid="shared-uid", source_dir="/data/shared")
    for i in range(cases):
        case_id = f"w{worker}-{i:03d}"
        with store.transaction():
            store.upsert_case(case_id, case_uid=f"uid-{case_id}", source_dir=f"/data/{case_id}")
            store.set_beams(case_id, [{"number": 1, "name": "G0"}, {"number": 2, "name": "G90"}])
            store.add_jobs(case_id, [
                {"job_id": f"{case_id}.p", "step": "prepare"},
                {"job_id": f"{case_id}.s", "step": "simulate", "array_indices": "0-1"},
                {"job_id": f"{case_id}.o", "step": "post"},
            ])
            store.set_case_status(case_id, "submitted")
        with store.transaction():
            for number in (1, 2):
                store.update_beam(case_id, number, status="completed", slurm_state="COMPLETED")
            for step in "pso":
                store.update_job(f"{case_id}.{step}", state="COMPLETED", finished=True)
            store.set_case_status(case_id, "completed")
            shared = store.require_case("shared")
            store.update_case("shared", attempts=shared.attempts + 1)
"""


def test_four_processes_write_at_once(tmp_path: Path) -> None:
    db_path = tmp_path / "state" / "mqi.db"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db_path), str(w), str(CASES), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WORKERS)
    ]
    for p in procs:  # all workers begin together, on a database none has created yet
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in procs]
    for code, err in results:
        assert "locked" not in err
        assert code == 0, err

    with Store(db_path) as store:
        cases = store.list_cases()
        assert len(cases) == WORKERS * CASES + 1
        shared = store.require_case("shared")
        assert shared.attempts == WORKERS * CASES
        done = store.list_cases(["completed"])
        assert len(done) == WORKERS * CASES
        assert store.active_jobs() == []
        assert len(store.list_jobs()) == WORKERS * CASES * 3
        events = store.events()
        # per case: 3 case statuses, 2 beams x 2, 3 jobs x 2; plus the shared case
        assert len(events) == WORKERS * CASES * (3 + 4 + 6) + 1
        assert len({e.id for e in events}) == len(events)
        for case in done[:: CASES // 4]:
            assert [b.status for b in store.list_beams(case.case_id)] == ["completed"] * 2
