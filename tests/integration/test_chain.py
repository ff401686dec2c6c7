"""Rendered bundles on the real dev cluster: sbatch accepts them and submit.sh runs the chain.

The engine is a small wrapper around the MOQUI stand-in that records
CUDA_VISIBLE_DEVICES in engine.out and waits until both beams have started (so the
two array tasks must hold GPUs at the same time). The post job runs
`<cluster.python> -m mqi.post .` with this checkout's interpreter (the real mqi.post; a
stand-in that only checks those arguments and writes results/summary.json when mqi.post
cannot run as a module). The case folder and its beam names are
hostile shell text; nothing may execute. The bundle lies in a folder with spaces and
quotes, and submit.sh is started from elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mqi import slurm
from mqi.clock import now_utc
from mqi.render import RenderedBundle, render_bundle
from tests.unit.test_render_cases import aptg_case, render_config

pytestmark = pytest.mark.cluster
synthetic = pytest.importorskip("mqi.testing.synthetic", reason="mqi.testing.synthetic builds the test case")
STANDIN = Path(sys.executable).parent / "mqi-moqui-standin"
GRID = (16, 16, 8)
ENGINE = """#!/bin/bash
# test engine: note the GPU, wait for the other beam to start, then run the stand-in
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"
touch "$(dirname "${@: -1}")/started"
for _ in $(seq 60); do
  [[ $(ls beams/*/started | wc -l) -ge 2 ]] && break
  sleep 0.5
done
exec %(standin)s "$@"
"""
POST_PYTHON = """#!/bin/bash
# test interpreter for the post job: accepts exactly `-m mqi.post .` in the bundle root
[[ "$*" == "-m mqi.post ." && -f manifest.json ]] || { echo "bad call: $* in $PWD" >&2; exit 2; }
mkdir -p results
echo '{"post": "stand-in"}' > results/summary.json
"""


@dataclass
class Chain:
    bundle: RenderedBundle
    ids: dict[str, str | None]
    records: dict[str, slurm.JobRecord]
    case_dir: Path


def sh(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def wait_terminal(expected: set[str], timeout: float = 180) -> dict[str, slurm.JobRecord]:
    """sacct records once every expected job or array task (``123_1``) has ended.

    sacct lags: right after a task ends it may still list a placeholder for its array.
    """
    since = now_utc().replace(hour=0, minute=0, second=0)
    deadline = time.monotonic() + timeout
    records: dict[str, slurm.JobRecord] = {}
    while time.monotonic() < deadline:
        (command,) = slurm.sacct_commands(expected, since)
        records = slurm.latest_by_job(slurm.parse_sacct(sh("bash", "-c", command).stdout))
        ended = {i for i, r in records.items() if slurm.phase_of(r)[0] in slurm.TERMINAL}
        # An array that never started may be listed by its tasks only (``N_[0-1%4]``, Slurm 25.11):
        # its plain id has ended when every task listed for it has.
        for job_id in expected - set(records):
            tasks = [r for i, r in records.items() if slurm.parent_id(i) == job_id]
            if tasks and all(t.job_id in ended for t in tasks):
                records[job_id] = tasks[0]
                ended.add(job_id)
        if expected <= ended and ended == set(records):
            return records
        time.sleep(1)
    raise AssertionError(f"jobs {sorted(expected)} did not all end within {timeout}s: {records}")


def live_jobs_of(case_uid: str) -> list[slurm.JobRecord]:
    names = ",".join(slurm.job_name(case_uid, step) for step in slurm.STEPS)
    out = sh("squeue", "-h", "-r", "-t", "all", f"--name={names}", "-o", slurm.SQUEUE_FORMAT).stdout
    return [r for r in slurm.parse_squeue(out) if slurm.phase_of(r)[0] not in slurm.TERMINAL]


def wait_no_live_jobs(case_uid: str, timeout: float = 20) -> list[slurm.JobRecord]:
    """The case's jobs still alive in squeue after a cancel has had time to land."""
    deadline = time.monotonic() + timeout
    while (live := live_jobs_of(case_uid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return live


def hostile_case(root: Path):
    folder = root / "$(touch pwned); x"
    synthetic.build_case(
        folder,
        ct_shape=GRID,
        spacing=(4.0, 4.0, 5.0),
        layers=2,
        spots_per_layer=4,
        beam_names=["b1; rm -rf ~", "$(touch pwned)"],
    )
    return folder


RENDERED_UIDS: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def cancel_leftovers() -> Iterator[None]:
    """A failed test must not leave its jobs queued: cancel them by id afterwards."""
    yield
    leftovers = sorted({r.parent_id for uid in RENDERED_UIDS for r in live_jobs_of(uid)})
    if leftovers:
        sh("scancel", *leftovers)


def render_for_cluster(
    root: Path, cluster: dict[str, str], uid: str, **slurm_settings: object
) -> RenderedBundle:
    RENDERED_UIDS.append(uid)
    if not STANDIN.exists():
        pytest.skip(f"no MOQUI stand-in at {STANDIN}")
    engine = root / "engine.sh"
    engine.write_text(ENGINE % {"standin": STANDIN})
    engine.chmod(0o755)
    python = root / "python.sh"
    python.write_text(POST_PYTHON)
    python.chmod(0o755)
    real_post = importlib.util.find_spec("mqi.post.__main__") is not None
    config = render_config(
        cluster={"python": sys.executable if real_post else str(python)},
        slurm={
            "partition": cluster["MQI_TEST_PARTITION"],
            "account": None,
            "mem_per_beam": None,
            "post_mem": None,
            "time_limit": "00:05:00",
            "prologue": [],
            "extra_directives": [],
            **slurm_settings,
        },
        moqui={"command": str(engine)},
        retention={"keep_raw": True},  # these tests look at the engine's raw output after post
    )
    case = aptg_case(hostile_case(root), case_uid=uid)
    return render_bundle(case, config, root / "remote dir 'q'" / uid)


def submit(bundle: RenderedBundle, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return sh("bash", str(bundle.path / "jobs" / "submit.sh"), *args, cwd=cwd)


@pytest.fixture(scope="module")
def chain(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Chain:
    root = tmp_path_factory.mktemp("chain")
    uid = f"t{os.getpid()}{int(time.time()) % 100000}"
    bundle = render_for_cluster(root, cluster, uid)
    done = submit(bundle, cwd=root)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    ids = json.loads(lines[0])
    records = wait_terminal({ids["prepare"], f"{ids['simulate']}_0", f"{ids['simulate']}_1", ids["post"]})
    return Chain(bundle, ids, records, root)


def test_sbatch_test_only_accepts_every_job_script(cluster: dict[str, str], tmp_path: Path) -> None:
    bundle = render_for_cluster(tmp_path, cluster, "testonly1")
    for step in slurm.STEPS:
        done = sh("sbatch", "--test-only", f"--chdir={bundle.path}", f"jobs/{step}.sbatch", cwd=bundle.path)
        assert done.returncode == 0, f"{step}: {done.stderr}"
        assert "to start at" in done.stderr


def test_submit_prints_one_json_line_with_three_job_ids(chain: Chain) -> None:
    assert set(chain.ids) == {"prepare", "simulate", "post"}
    assert all(str(job_id).isdigit() for job_id in chain.ids.values())


def test_the_chain_runs_prepare_two_beams_and_post_to_completion(chain: Chain) -> None:
    uid = chain.bundle.manifest.case_uid
    prepare, simulate, post = (chain.ids[step] for step in slurm.STEPS)
    expected = {
        prepare: f"mqi.{uid}.prepare",
        f"{simulate}_0": f"mqi.{uid}.simulate",
        f"{simulate}_1": f"mqi.{uid}.simulate",
        post: f"mqi.{uid}.post",
    }
    states = {job_id: (r.name, r.state, r.comment) for job_id, r in chain.records.items()}
    assert states == {job_id: (name, "COMPLETED", f"mqi:{uid}") for job_id, name in expected.items()}
    task_ends = [chain.records[f"{simulate}_{i}"].end for i in (0, 1)]
    assert chain.records[prepare].end <= min(chain.records[f"{simulate}_{i}"].start for i in (0, 1))
    assert chain.records[post].start >= max(task_ends)


def test_each_beam_ran_on_its_own_gpu_and_left_its_output(chain: Chain) -> None:
    root = chain.bundle.path
    devices = set()
    for beam in chain.bundle.manifest.beams:
        beam_dir = root / beam.dir
        assert (beam_dir / "exit_code").read_text() == "0\n"
        assert not (beam_dir / "failure").exists()
        [line] = [x for x in (beam_dir / "engine.out").read_text().splitlines() if x.startswith("CUDA")]
        devices.add(line)
        [output] = (beam_dir / "output").glob("*_Dose.raw")
        assert output.stat().st_size == chain.bundle.manifest.expected_output_bytes()
    assert len(devices) == 2, devices


def test_slurm_logs_land_in_the_bundle(chain: Chain) -> None:
    uid = chain.bundle.manifest.case_uid
    logs = sorted(p.name for p in (chain.bundle.path / "logs").iterdir())
    simulate = chain.ids["simulate"]
    assert logs == sorted(
        [
            f"mqi.{uid}.post-{chain.ids['post']}.out",
            f"mqi.{uid}.prepare-{chain.ids['prepare']}.out",
            f"mqi.{uid}.simulate-{simulate}_0.out",
            f"mqi.{uid}.simulate-{simulate}_1.out",
        ]
    )
    beam_log = (chain.bundle.path / "logs" / f"mqi.{uid}.simulate-{simulate}_0.out").read_text()
    assert "Time taken by MC engine" in beam_log and "beam 1 done" in beam_log


def test_post_wrote_the_results(chain: Chain) -> None:
    summary = json.loads((chain.bundle.path / "results" / "summary.json").read_text())
    assert summary


def test_nothing_from_names_was_executed(chain: Chain) -> None:
    assert not list(chain.case_dir.rglob("pwned"))
    assert not list(Path.home().glob("pwned"))


def test_only_beams_reruns_one_beam_and_post(chain: Chain) -> None:
    (chain.bundle.path / "beams/2/exit_code").unlink()
    done = submit(chain.bundle, "--only-beams", "1", cwd=chain.case_dir)
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout)
    assert ids["prepare"] is None
    records = wait_terminal({f"{ids['simulate']}_1", ids["post"]})
    assert {job_id: r.state for job_id, r in records.items()} == {
        f"{ids['simulate']}_1": "COMPLETED",
        ids["post"]: "COMPLETED",
    }
    assert (chain.bundle.path / "beams/2/exit_code").read_text() == "0\n"


def test_a_refused_sbatch_cancels_what_was_submitted(cluster: dict[str, str], tmp_path: Path) -> None:
    uid = f"f{os.getpid()}{int(time.time()) % 100000}"
    bundle = render_for_cluster(tmp_path, cluster, uid)
    # the post job's partition vanished after rendering: prepare and simulate are already in
    post = bundle.path / "jobs" / "post.sbatch"
    post.write_text(
        post.read_text().replace(f"--partition={cluster['MQI_TEST_PARTITION']}", "--partition=nosuch")
    )
    done = submit(bundle, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stdout == ""
    assert "invalid partition" in done.stderr.lower()
    assert "sbatch refused the post job" in done.stderr
    [cancelled] = re.findall(r"cancelling job\(s\) (\d+) (\d+)", done.stderr)
    assert wait_no_live_jobs(uid) == []
    records = wait_terminal(set(cancelled))
    assert records[cancelled[1]].state == "CANCELLED"  # simulate; prepare may have finished


def test_a_refused_simulate_cancels_prepare(cluster: dict[str, str], tmp_path: Path) -> None:
    uid = f"s{os.getpid()}{int(time.time()) % 100000}"
    bundle = render_for_cluster(tmp_path, cluster, uid, gpus_per_beam=99)  # more than any node has
    done = submit(bundle, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stdout == ""
    assert "sbatch refused the simulate job" in done.stderr
    [prepare] = re.findall(r"cancelling job\(s\) (\d+)$", done.stderr, re.MULTILINE)
    assert wait_no_live_jobs(uid) == []
    assert wait_terminal({prepare})[prepare].state in ("CANCELLED", "COMPLETED")


def test_a_bad_only_beams_index_submits_nothing(cluster: dict[str, str], tmp_path: Path) -> None:
    uid = f"o{os.getpid()}{int(time.time()) % 100000}"
    bundle = render_for_cluster(tmp_path, cluster, uid)
    done = submit(bundle, "--only-beams", "0,7", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "7 is not a distinct array index" in done.stderr
    assert live_jobs_of(uid) == []
    names = ",".join(slurm.job_name(uid, step) for step in slurm.STEPS)
    assert sh("sacct", "-X", "-n", f"--name={names}", "-S", "now-10minutes").stdout.strip() == ""
