"""Both Slurm backends (slurm.backend: cli and pyslurm) on the Slurm 25.11 dev cluster with the
local transport: submit, adopt after a crash, poll through a controller restart, cancel and
retry. Each scenario runs once per backend and must leave the same store contents (what
`mqi status --json` shows, without ids and times) and the same jobs in Slurm.

pyslurm links the libslurm of one Slurm major version (25.11 here): its cases skip when it does
not import (`MQI_SLURM=25.11 scripts/dev-cluster.sh pyslurm` installs it into .venv).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mqi import slurm
from mqi.testing.synthetic import build_case
from tests.conftest import SLURM_FLAVOUR
from tests.helpers import ROOT, NodeKeeper, cancel_case_jobs, live_chains, run_mqi, slurm_jobs, submit_json

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        SLURM_FLAVOUR != "25.11", reason="the backend suite runs on the 25.11 flavour (MQI_SLURM=25.11)"
    ),
]

BACKENDS = ["cli", "pyslurm"]
HELD = ["--begin=now+600"]  # visible in squeue, cheap, cancelled at the end


def pyslurm_missing() -> str | None:
    """Why pyslurm cannot be used here, or None (imported in a child: it reads SLURM_CONF once)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import pyslurm; print(pyslurm.version.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return f"pyslurm does not import ({last}): MQI_SLURM=25.11 scripts/dev-cluster.sh pyslurm"
    if not probe.stdout.startswith("25.11"):
        return f"pyslurm {probe.stdout.strip()} is not built for Slurm 25.11"
    return None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, cluster: dict[str, str]) -> str:
    if request.param == "pyslurm" and (why := pyslurm_missing()):
        pytest.skip(why)
    return request.param


@pytest.fixture
def local_config(make_config: Callable[..., Path], backend: str) -> Callable[..., Path]:
    def make(**overrides: Any) -> Path:
        slurm_section = {"backend": backend, **overrides.pop("slurm", {})}
        return make_config("local", slurm=slurm_section, **overrides)

    return make


@pytest.fixture
def submitted_uids() -> Iterator[list[str]]:
    uids: list[str] = []
    yield uids
    for uid in uids:
        cancel_case_jobs(uid)


def small_case(root: Path, name: str) -> Path:
    build_case(root / name, ct_shape=(24, 24, 12), layers=2, spots_per_layer=9)
    return root / name


def status_of(config: Path, case_id: str) -> dict:
    result = run_mqi("status", case_id, "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def poll_wait(config: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_mqi("poll", "--wait", "--timeout", str(timeout), "--config", str(config), timeout=timeout + 60)


def store_view(case: dict) -> dict[str, Any]:
    """What the store says about a case, without what differs from run to run (ids, times)."""
    for beam in case["beams"]:
        for key in ("started_at", "ended_at"):
            assert beam[key] is None or beam[key].endswith("Z"), f"times are UTC: {beam}"
        if beam["started_at"] and beam["ended_at"]:
            assert beam["started_at"] <= beam["ended_at"]
    return {
        "status": case["status"],
        "beams": [
            (b["number"], b["status"], b["slurm_state"], b["exit_code"], b["node"], b["reason"])
            for b in case["beams"]
        ],
        "jobs": sorted(
            (j["step"], j["generation"], j["state"], j["finished"], j["exit_code"], j["reason"])
            for j in case["jobs"]
        ),
    }


def bundle_dir(config: Path, case_uid: str) -> Path:
    """Where the case's bundle lies on the cluster (this machine: transport local)."""
    remote = yaml.safe_load(config.read_text())["cluster"]["remote_dir"]
    return (Path(remote) / case_uid).resolve()


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` of one job (the first task of an array) as key=value pairs."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    ).stdout
    fields: dict[str, str] = {}
    for word in out.splitlines()[0].split():
        key, _, value = word.partition("=")
        fields.setdefault(key, value)
    return fields


def test_submit_queues_the_chain_as_submit_sh_does(
    local_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = local_config(slurm={"extra_directives": HELD, "cpu_partition": "cpu", "default_priority": "low"})
    outcome = submit_json(config, small_case(tmp_path, "Chain"))
    uid = outcome["case_uid"]
    submitted_uids.append(uid)
    jobs = outcome["jobs"]
    assert outcome["status"] == "submitted" and all(jobs.values())
    root = bundle_dir(config, uid)
    prepare, simulate, post = (scontrol_job(jobs[step]) for step in slurm.STEPS)
    for step, job in zip(slurm.STEPS, (prepare, simulate, post), strict=True):
        assert job["JobName"] == f"mqi.{uid}.{step}"
        assert job["Comment"] == f"mqi:{uid}"
        assert job["WorkDir"] == str(root)
        assert job["Nice"] == "1000", "the priority class's --nice"
        assert job["Partition"] == ("gpu" if step == "simulate" else "cpu")
    assert prepare["TimeLimit"] == "00:15:00" and post["TimeLimit"] == "00:30:00"
    assert simulate["TimeLimit"] == "00:10:00"
    assert prepare["StdOut"] == f"{root}/logs/mqi.{uid}.prepare-{jobs['prepare']}.out"
    assert simulate["StdOut"].startswith(f"{root}/logs/mqi.{uid}.simulate-")
    assert "gres/gpu:1" in simulate["TresPerNode"] or "gpu:1" in simulate.get("TresPerNode", "")
    assert simulate["ArrayTaskId"] == "0-1%8", "one task per beam, throttled"
    assert simulate["Dependency"].startswith(f"afterok:{jobs['prepare']}")
    assert post["Dependency"].startswith(f"afterany:{jobs['simulate']}")
    assert simulate["KillOnInvalidDependent"] == post["KillOnInvalidDependent"] == "Yes"


def test_submit_and_poll_to_a_delivered_case(
    local_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = local_config()
    outcome = submit_json(config, small_case(tmp_path, "Deliver"))
    submitted_uids.append(outcome["case_uid"])
    assert poll_wait(config).returncode == 0
    case = status_of(config, outcome["case_id"])
    assert store_view(case) == {
        "status": "completed",
        "beams": [
            (1, "completed", "COMPLETED", 0, "vm", None),
            (2, "completed", "COMPLETED", 0, "vm", None),
        ],
        "jobs": [
            ("post", 1, "COMPLETED", True, "0:0", None),
            ("prepare", 1, "COMPLETED", True, "0:0", None),
            ("simulate", 1, "COMPLETED:2", True, None, None),
        ],
    }
    assert sorted(p.name for p in Path(case["results_dir"]).glob("*.dcm")) == [
        "RD.beam1.dcm",
        "RD.beam2.dcm",
        "RD.plan.dcm",
    ]
    uid, ids = outcome["case_uid"], outcome["jobs"]
    logs = sorted(p.name for p in (bundle_dir(config, uid) / "logs").iterdir())
    assert f"mqi.{uid}.prepare-{ids['prepare']}.out" in logs and f"mqi.{uid}.post-{ids['post']}.out" in logs
    assert sum(name.startswith(f"mqi.{uid}.simulate-{ids['simulate']}_") for name in logs) == 2


def post_jobs() -> set[str]:
    """Ids of this user's post jobs in squeue."""
    out = subprocess.run(["squeue", "-h", "--me", "-o", "%i %j"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith(".post")}


def test_a_crash_after_sbatch_is_adopted_not_resubmitted(
    local_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = local_config(slurm={"extra_directives": HELD})
    case_dir = small_case(tmp_path, "Crash")
    before = post_jobs()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqi", "submit", str(case_dir), "--config", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Killed the moment Slurm holds the whole chain: before (or while) the store records it.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and post_jobs() <= before:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    outcome = submit_json(config, case_dir)
    uid = outcome["case_uid"]
    submitted_uids.append(uid)
    assert live_chains(uid) == 1, "one chain in Slurm"
    jobs = slurm_jobs(uid)
    live = {r.parent_id for step in jobs.values() for r in step if not r.state.startswith("CANCELLED")}
    assert live == set(outcome["jobs"].values()), "the store names Slurm's chain"
    case = status_of(config, outcome["case_id"])
    view = store_view(case)
    assert view["status"] == "submitted"
    assert [j[:2] for j in view["jobs"]] == [("post", 1), ("prepare", 1), ("simulate", 1)]
    assert {b[1] for b in view["beams"]} == {"pending"}
    assert run_mqi("poll", "--config", str(config)).returncode == 0
    view = store_view(status_of(config, outcome["case_id"]))
    assert view["jobs"] == [
        ("post", 1, "PENDING", False, None, None),
        ("prepare", 1, "PENDING", False, None, None),
        ("simulate", 1, "PENDING:2", False, None, None),
    ]
    assert view["beams"] == [
        (1, "pending", "PENDING", None, None, "waiting: Dependency"),
        (2, "pending", "PENDING", None, None, "waiting: Dependency"),
    ]


def test_poll_through_a_controller_restart(
    local_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    standin = os.environ["MQI_TEST_STANDIN"]
    config = local_config(moqui={"command": f"{standin} --seconds 20"})
    outcome = submit_json(config, small_case(tmp_path, "Restart"))
    submitted_uids.append(outcome["case_uid"])
    # After slurmctld has saved the jobs in its state (a kill within ~2 s loses them).
    time.sleep(12)
    pid = (Path(os.environ["MQI_DEV_DIR"]) / "run" / "slurmctld.pid").read_text().strip()
    os.kill(int(pid), signal.SIGKILL)
    time.sleep(1)
    during = run_mqi("poll", "--config", str(config), "--json")
    assert during.returncode in (0, 1), during.stderr
    assert "Traceback" not in during.stderr
    assert status_of(config, outcome["case_id"])["status"] not in ("failed", "cancelled"), (
        "an outage fails nothing"
    )
    with NodeKeeper():
        subprocess.run([str(ROOT / "scripts" / "dev-cluster.sh"), "start"], check=True, capture_output=True)
        result = poll_wait(config)
    assert result.returncode == 0, result.stderr
    view = store_view(status_of(config, outcome["case_id"]))
    assert view["status"] == "completed"
    assert [b[:4] for b in view["beams"]] == [
        (1, "completed", "COMPLETED", 0),
        (2, "completed", "COMPLETED", 0),
    ]
    assert {j[0] for j in view["jobs"] if j[1] == 1} == set(slurm.STEPS)
    assert all(j[3] for j in view["jobs"]), "every job settled"


def test_cancel_leaves_nothing_in_the_queue(
    local_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    config = local_config(slurm={"extra_directives": HELD})
    outcome = submit_json(config, small_case(tmp_path, "Cancel"))
    submitted_uids.append(outcome["case_uid"])
    queue = json.loads(run_mqi("queue", "--config", str(config), "--json").stdout)
    assert {row["case_id"] for row in queue} >= {outcome["case_id"]}
    result = run_mqi("cancel", outcome["case_id"], "--config", str(config))
    assert result.returncode == 0, result.stderr
    live = [r for step in slurm_jobs(outcome["case_uid"]).values() for r in step if r.state != "CANCELLED"]
    assert live == []
    view = store_view(status_of(config, outcome["case_id"]))
    assert view == {
        "status": "cancelled",
        "beams": [
            (1, "cancelled", "CANCELLED", None, None, "mqi cancel"),
            (2, "cancelled", "CANCELLED", None, None, "mqi cancel"),
        ],
        "jobs": view["jobs"],
    }
    assert all(j[3] for j in view["jobs"]), "every job settled"


def test_a_failed_beam_is_retried(
    local_config: Callable[..., Path], tmp_path: Path, submitted_uids: list[str]
) -> None:
    standin = os.environ["MQI_TEST_STANDIN"]
    config = local_config(moqui={"command": f"{standin} --fail-beams 2 --fail-mode 134 --fail-attempts 1"})
    outcome = submit_json(config, small_case(tmp_path, "Retry"))
    submitted_uids.append(outcome["case_uid"])
    assert poll_wait(config).returncode == 0
    view = store_view(status_of(config, outcome["case_id"]))
    assert view["status"] == "failed"
    assert view["beams"][0] == (1, "completed", "COMPLETED", 0, "vm", None)
    number, status, state, exit_code, node, reason = view["beams"][1]
    assert (number, status, state, exit_code, node) == (2, "failed", "FAILED", 134, "vm"), "Slurm's exit code"
    assert reason and "134" in reason
    retried = run_mqi("retry", outcome["case_id"], "--config", str(config), "--json")
    assert retried.returncode == 0, retried.stderr
    assert poll_wait(config).returncode == 0
    view = store_view(status_of(config, outcome["case_id"]))
    assert view["status"] == "completed"
    assert view["beams"] == [
        (1, "completed", "COMPLETED", 0, "vm", None),
        (2, "completed", "COMPLETED", 0, "vm", None),
    ]
    assert [j[:4] for j in view["jobs"]] == [
        ("post", 1, "COMPLETED", True),
        ("post", 2, "COMPLETED", True),
        ("prepare", 1, "COMPLETED", True),
        ("simulate", 1, "COMPLETED:1,FAILED:1", True),
        ("simulate", 2, "COMPLETED:1", True),
    ]


def test_pyslurm_refuses_to_start_with_one_line(make_config: Callable[..., Path], tmp_path: Path) -> None:
    over_ssh = make_config("ssh", slurm={"backend": "pyslurm"})
    result = run_mqi("poll", "--config", str(over_ssh))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cluster.transport: local" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    local = make_config("local", slurm={"backend": "pyslurm"})
    # pyslurm absent: Python's documented way to make an import fail (sys.modules[name] = None).
    blocked = (
        "import sys, runpy; sys.modules['pyslurm'] = None; "
        f"sys.argv = ['mqi', 'poll', '--config', {str(local)!r}]; "
        "runpy.run_module('mqi', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "pyslurm does not import" in result.stderr and "mqi[pyslurm]" in result.stderr
