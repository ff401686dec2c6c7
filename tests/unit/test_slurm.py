"""Slurm command lines and parsers, on output recorded from the real dev clusters: Slurm 22.05
(Debian's, in recorded/) and 25.11 (in recorded/25.11/), both by recorded/record.sh's scenario."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mqi import slurm
from mqi.slurm import Phase, backend
from mqi.transport import LocalTransport

RECORDED = Path(__file__).parent / "recorded"


@dataclass(frozen=True)
class Recording:
    """One run of record.sh: where its files are and the ids its jobs got."""

    version: str
    folder: Path
    array: str  # mqi.rec1.simulate --array=0-5%2
    plain_post: str  # afterok:array
    killed_post: str  # afterok:array --kill-on-invalid-dep=yes
    held_post: str  # -H
    pending_array: str  # mqi.rec2.simulate --array=0-4%1

    def read(self, name: str) -> str:
        return (self.folder / name).read_text()


RECORDINGS = [
    Recording("22.05", RECORDED, "6", "7", "8", "9", "15"),
    Recording("25.11", RECORDED / "25.11", "1", "2", "3", "4", "10"),
]


@pytest.fixture(params=RECORDINGS, ids=[r.version for r in RECORDINGS])
def rec(request: pytest.FixtureRequest) -> Recording:
    return request.param


def by_id(records: list[slurm.JobRecord]) -> dict[str, slurm.JobRecord]:
    return {record.job_id: record for record in records}


def test_sacct_parses_every_end_state_of_an_array_and_its_dependants(rec: Recording) -> None:
    jobs = by_id(slurm.parse_sacct(rec.read("sacct_mixed.txt")))
    task = {i: jobs[f"{rec.array}_{i}"] for i in range(6)}
    assert set(jobs) == {f"{rec.array}_{i}" for i in range(6)} | {
        rec.plain_post,
        rec.killed_post,
        rec.held_post,
    }
    assert slurm.phase_of(task[0]) == (Phase.COMPLETED, None)
    assert slurm.phase_of(task[1]) == (Phase.FAILED, "exit code 3")
    assert slurm.phase_of(task[2]) == (Phase.FAILED, "signal 11")
    phase, reason = slurm.phase_of(task[3])
    assert phase is Phase.CANCELLED and reason == "cancelled by 0"
    # The task that never started: 22.05 prints it as 6_5, 25.11 keeps it bracketed (1_[5%2]).
    assert task[5].raw_id == rec.array and task[5].array_index == 5
    assert slurm.phase_of(task[5]) == (Phase.CANCELLED, "cancelled by 0")
    assert task[1].node == "vm" and task[5].node is None
    assert jobs[rec.plain_post].comment is None  # pending jobs carry no comment in sacct yet
    assert slurm.phase_of(jobs[rec.killed_post])[0] is Phase.CANCELLED
    assert task[0].comment == "mqi:rec1"


def test_sacct_expands_a_collapsed_pending_array(rec: Recording) -> None:
    jobs = by_id(slurm.parse_sacct(rec.read("sacct_pending_array.txt")))
    assert sorted(jobs) == [f"{rec.pending_array}_{i}" for i in range(5)]
    waiting = jobs[f"{rec.pending_array}_3"]
    assert waiting.state == "PENDING" and waiting.raw_id == rec.pending_array
    assert slurm.phase_of(jobs[f"{rec.pending_array}_0"])[0] is Phase.RUNNING


def test_sacct_lines_of_live_jobs_are_skipped_and_the_merge_is_the_same(rec: Recording) -> None:
    text = rec.read("sacct_pending_array.txt")
    array = rec.pending_array
    # a collapsed array line goes only when squeue lists every one of its tasks live
    some = {f"{array}_{i}" for i in (1, 2)}
    assert sorted(by_id(slurm.parse_sacct(text, skip=some))) == [f"{array}_{i}" for i in range(5)]
    every = {f"{array}_{i}" for i in range(5)}
    assert slurm.parse_sacct(text, skip=every) == []
    sacct, squeue = (
        slurm.parse_sacct(rec.read("sacct_mixed.txt")),
        slurm.parse_squeue(rec.read("squeue_running.txt")),
    )
    live = slurm.live_job_ids(squeue)
    skipped = slurm.parse_sacct(rec.read("sacct_mixed.txt"), skip=live)
    assert live and len(skipped) < len(sacct)
    assert slurm.merge_records(skipped, squeue) == slurm.merge_records(sacct, squeue)


def test_sacct_pending_reason_is_the_one_slurm_printed() -> None:
    """22.05's sacct gives a pending job's reason; 25.11's says None (squeue has it)."""
    old, new = RECORDINGS
    assert by_id(slurm.parse_sacct(old.read("sacct_pending_array.txt")))["15_3"].reason == "JobArrayTaskLimit"
    assert by_id(slurm.parse_sacct(new.read("sacct_pending_array.txt")))["10_3"].reason is None
    assert by_id(slurm.parse_squeue(new.read("squeue_running.txt")))["1_5"].reason == "JobArrayTaskLimit"


def test_squeue_shows_dependency_never_satisfied(rec: Recording) -> None:
    jobs = by_id(slurm.parse_squeue(rec.read("squeue_after_cancel.txt")))
    assert slurm.never_satisfied(jobs[rec.plain_post])
    assert slurm.phase_of(jobs[rec.plain_post]) == (Phase.PENDING, "DependencyNeverSatisfied")
    assert not slurm.never_satisfied(jobs[rec.held_post])
    assert jobs[rec.held_post].reason == "JobHeldUser"
    assert jobs[rec.killed_post].dependency == f"afterok:{rec.array}_*(failed)"
    assert slurm.phase_of(jobs[rec.killed_post])[0] is Phase.CANCELLED


def test_squeue_running_array_tasks_have_nodes(rec: Recording) -> None:
    jobs = by_id(slurm.parse_squeue(rec.read("squeue_running.txt")))
    running = jobs[f"{rec.array}_3"]
    assert running.state == "RUNNING" and running.node == "vm"
    assert slurm.parse_job_name(running.name) == ("rec1", "simulate")
    assert jobs[rec.plain_post].dependency == f"afterok:{rec.array}_*(unfulfilled)"
    # 22.05 says JobLaunchFailure for the task killed by SIGSEGV, 25.11 RaisedSignal:11(...);
    # either way the phase comes from the state.
    assert slurm.phase_of(jobs[f"{rec.array}_2"])[0] is Phase.FAILED


def test_a_record_is_a_job_by_its_name_or_by_saccts_placeholder_name_and_the_comment() -> None:
    # As sacct printed them on the loaded 22.05 dev cluster, seconds apart, for one prepare job.
    lines = (
        "122864|122864|allocation|COMPLETED|0:0|2026-11-30T14:45:37|2026-11-30T14:45:37|"
        "2026-11-30T14:45:37|00:00:00|vm|None|mqi:6e17f29ddb64eba2\n"
        "122864|122864|mqi.6e17f29ddb64eba2.prepare|COMPLETED|0:0|2026-11-30T14:45:37|"
        "2026-11-30T14:45:37|2026-11-30T14:45:37|00:00:00|vm|None|mqi:6e17f29ddb64eba2\n"
    )
    name, comment = slurm.job_name("6e17f29ddb64eba2", "prepare"), slurm.job_comment("6e17f29ddb64eba2")
    records = slurm.parse_sacct(lines)
    assert [slurm.is_named(r.name, r.comment, name, comment) for r in records] == [True, True]
    placeholder = records[0]
    other_case = slurm.job_comment("0123456789abcdef")
    assert not slurm.is_named(placeholder.name, placeholder.comment, name, other_case)
    assert not slurm.is_named(placeholder.name, None, name, comment)
    assert not slurm.is_named("mqi.6e17f29ddb64eba2.post", comment, name, comment), "another step"


def test_sinfo_partition_line(rec: Recording) -> None:
    info = slurm.parse_partition(rec.read("sinfo_partition.txt"))
    assert info == slurm.PartitionInfo(name="gpu", available=True, gpus_per_node=4, nodes=1)


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        ("TIMEOUT", Phase.FAILED),
        ("OUT_OF_MEMORY", Phase.FAILED),
        ("NODE_FAIL", Phase.FAILED),
        ("PREEMPTED", Phase.FAILED),
        ("BOOT_FAIL", Phase.FAILED),
        ("DEADLINE", Phase.FAILED),
        ("REQUEUED", Phase.PENDING),
        ("SUSPENDED", Phase.RUNNING),
        ("CONFIGURING", Phase.PENDING),
        ("COMPLETING", Phase.RUNNING),
        ("SOMETHING_NEW", Phase.RUNNING),
    ],
)
def test_every_state_maps_to_a_phase(state: str, phase: Phase) -> None:
    record = slurm.JobRecord(
        "1", "1", "mqi.u.simulate", state, state, None, 0, 0, None, None, None, None, None
    )
    assert slurm.phase_of(record)[0] is phase


def test_timeout_reason_tells_what_to_change() -> None:
    record = slurm.JobRecord("1", "1", "x", "TIMEOUT", "TIMEOUT", None, 0, 0, None, None, None, None, None)
    assert "time_limit" in (slurm.phase_of(record)[1] or "")


def test_unknown_state_is_never_terminal() -> None:
    record = slurm.JobRecord("1", "1", "x", "WEIRD", "WEIRD", None, None, None, None, None, None, None, None)
    phase, reason = slurm.phase_of(record)
    assert phase not in slurm.TERMINAL and reason == "unknown Slurm state WEIRD"


def test_sacct_id_lists_split_only_at_the_kernel_cap_on_one_argument() -> None:
    # 5,000 tracked jobs (array tasks share their parent's id): one list, one sacct
    ids = [str(i) for i in range(300000, 305000)] + ["300001_0", "300001_1"]
    (one,) = slurm.sacct_id_lists(ids)
    assert one.split(",") == [str(i) for i in range(300000, 305000)]
    # 20,000 ids of 7 digits are 160 KB: two lists, each one argument sacct can be given
    many = [str(i) for i in range(1000000, 1020000)]
    lists = slurm.sacct_id_lists(many)
    assert len(lists) == 2
    assert all(len(ids.encode()) <= slurm.ARGUMENT_MAX_BYTES for ids in lists)
    assert ",".join(lists).split(",") == many
    assert slurm.sacct_id_lists([]) == []


def test_sacct_commands_bound_the_start_time_and_fit_one_argument() -> None:
    since = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    (one,) = slurm.sacct_commands([str(i) for i in range(1, 5001)] + ["5_1", "5_2"], since)
    assert " -S 2026-01-01T11:55:00 " in one and "--parsable2" in one and one.startswith("TZ=UTC sacct")
    assert one.endswith(" -j 1,2,3,4,5,6") is False and one.endswith(",4999,5000")
    commands = slurm.sacct_commands([str(i) for i in range(1000000, 1020000)], since)
    assert len(commands) == 2
    assert all(len(command.encode()) <= slurm.ARGUMENT_MAX_BYTES for command in commands)


# -- the poll's query: real bash, sacct and squeue printing what 22.05 printed (recorded/) --


def fake_slurm(bin_dir: Path, sacct_rc: int = 0, squeue_rc: int = 0) -> Path:
    """sacct and squeue that log their arguments and print the recorded output."""
    log = bin_dir / "calls.log"
    bin_dir.mkdir(exist_ok=True)
    for tool, text, rc in (
        ("sacct", RECORDED / "sacct_mixed.txt", sacct_rc),
        ("squeue", RECORDED / "squeue_running.txt", squeue_rc),
    ):
        script = bin_dir / tool
        script.write_text(
            "#!/bin/bash\n"
            # one write per call: sacct and squeue may run side by side
            f"IFS=$'\\x1f'; line=\"{tool}$IFS$TZ$IFS$*\"; printf '%s\\n' \"$line\" >> {log}\n"
            f"[ {rc} = 0 ] || {{ echo '{tool}: error: Unable to contact slurm' >&2; exit {rc}; }}\n"
            f"tail -n +{2 if tool == 'sacct' else 1} {text}\n"
        )
        script.chmod(0o755)
    return log


def calls(log: Path) -> list[list[str]]:
    return [line.split("\x1f") for line in log.read_text().splitlines() if line] if log.exists() else []


def recorded_merge() -> dict[str, slurm.JobRecord]:
    sacct = slurm.parse_sacct((RECORDED / "sacct_mixed.txt").read_text())
    return slurm.merge_records(sacct, slurm.parse_squeue((RECORDED / "squeue_running.txt").read_text()))


@pytest.fixture
def fake_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    return tmp_path / "bin"


def test_sacct_takes_5000_ids_on_stdin_in_one_call(fake_path: Path) -> None:
    log = fake_slurm(fake_path)
    ids = [str(i) for i in range(300000, 305000)] + [f"300002_{n}" for n in range(4)]
    query = slurm.sacct_stdin_command(ids, datetime(2026, 11, 22, 0, 40, tzinfo=UTC))
    assert query.slurm_commands == 1
    assert len(query.command) < 1000 and "300000" not in query.command  # no ids in the command line
    result = LocalTransport().run(query.command, stdin=query.stdin)
    assert result.ok, result.stderr
    (sacct,) = calls(log)
    assert sacct[:2] == ["sacct", "UTC"] and sacct[-2:] == ["-j", ",".join(ids[:5000])]
    assert sacct[sacct.index("-S") + 1] == "2026-11-22T00:35:00"
    assert result.stdout == "".join((RECORDED / "sacct_mixed.txt").read_text().splitlines(True)[1:])


def test_beyond_one_argument_one_sacct_per_list(fake_path: Path) -> None:
    log = fake_slurm(fake_path)
    ids = [str(i) for i in range(1000000, 1020000)]
    query = slurm.sacct_stdin_command(ids, datetime(2026, 11, 22, tzinfo=UTC))
    assert query.slurm_commands == 2
    assert LocalTransport().run(query.command, stdin=query.stdin).ok
    assert [c[-1] for c in calls(log)] == slurm.sacct_id_lists(ids)


def test_ids_that_did_not_arrive_fail_the_sacct_step(fake_path: Path) -> None:
    fake_slurm(fake_path)
    ids = [str(i) for i in range(1000000, 1020000)]
    query = slurm.sacct_stdin_command(ids, datetime(2026, 11, 22, tzinfo=UTC))
    for cut in ("", query.stdin.splitlines()[0] + "\n"):
        result = LocalTransport().run(query.command, stdin=cut)
        assert not result.ok and "lines of job ids arrived" in result.stderr


def test_sacct_is_asked_only_about_jobs_squeue_does_not_list_live() -> None:
    live = slurm.live_job_ids(slurm.parse_squeue((RECORDED / "squeue_running.txt").read_text()))
    assert live == {"6_3", "6_4", "6_5", "7", "8", "9"}
    # 7 is live; 10 is gone from squeue (finished or lost); array 6 lost tasks 0-2 to sacct
    assert slurm.needs_sacct(["7", "10", "6"], live, {"6": "0-5"}) == ["10", "6"]
    # an array whose every task squeue lists live is squeue's alone; one of unknown spec is asked
    assert slurm.needs_sacct(["6"], live, {"6": "3-5%2"}) == []
    assert slurm.needs_sacct(["6"], live) == ["6"]


@pytest.fixture(params=["side by side", "squeue first"])
def strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the query runs: sacct of every job beside squeue (up to SIDE_BY_SIDE_JOBS
    jobs), or squeue first and sacct of the jobs it does not list live (beyond)."""
    monkeypatch.setattr(backend, "SIDE_BY_SIDE_JOBS", 10**6 if request.param == "side by side" else 0)
    return str(request.param)


def test_query_merges_the_recorded_answers(fake_path: Path, strategy: str) -> None:
    log = fake_slurm(fake_path)
    since = datetime(2026, 11, 22, tzinfo=UTC)
    answer = backend.CliBackend(LocalTransport()).query(["7", "10", "6"], since, arrays={"6": "0-5"})
    assert answer.error is None and not answer.accounting_down and answer.commands == 2
    made = calls(log)
    assert sorted(c[0] for c in made) == ["sacct", "squeue"]
    (sacct,) = [c for c in made if c[0] == "sacct"]
    if strategy == "squeue first":
        assert made[0][0] == "squeue" and sacct[-1] == "6,10"  # not 7: squeue lists it live
    else:
        assert sacct[-1] == "6,7,10"
    assert answer.records == recorded_merge()


def test_query_tells_accounting_down_every_cycle(fake_path: Path, strategy: str) -> None:
    log = fake_slurm(fake_path, sacct_rc=1)
    answer = backend.CliBackend(LocalTransport()).query(["8", "7", "9"], datetime(2026, 11, 22, tzinfo=UTC))
    # every job is live in squeue: squeue first still asks sacct about one
    asked = [c[-1] for c in calls(log) if c[0] == "sacct"]
    assert asked == (["8"] if strategy == "squeue first" else ["7,8,9"])
    assert answer.accounting_down and answer.records is not None and "accounting" in answer.warnings[0]
    assert set(answer.records) >= {"6_3", "7", "8", "9"}  # squeue's


def test_query_tells_slurm_down_from_accounting_down(fake_path: Path, strategy: str) -> None:
    log = fake_slurm(fake_path, squeue_rc=1)
    answer = backend.CliBackend(LocalTransport()).query(["7"], datetime(2026, 11, 22, tzinfo=UTC))
    assert answer.records is None and answer.error and "Slurm did not answer" in answer.error
    if strategy == "squeue first":
        assert [c[0] for c in calls(log)] == ["squeue"]  # nothing concluded, nothing more asked


def test_submit_output_parsing() -> None:
    out = "chatter\n" + '{"prepare": "10", "simulate": "11", "post": "12"}\n'
    assert slurm.parse_submit_output(out) == {"prepare": "10", "simulate": "11", "post": "12"}
    retry = '{"prepare": null, "simulate": "21", "post": "22"}'
    assert slurm.parse_submit_output(retry)["prepare"] is None
    with pytest.raises(slurm.SlurmOutputError):
        slurm.parse_submit_output("sbatch: error: invalid partition")


def test_sbatch_parsable_and_exit_codes() -> None:
    assert slurm.parse_sbatch_parsable("123;cluster\n") == "123"
    assert slurm.parse_exit_code("0:15") == (0, 15)
    assert slurm.parse_exit_code("DependencyNeverSatisfied") == (None, None)


def test_commands_quote_what_they_are_given() -> None:
    assert slurm.scancel_command(["12_1", "12_2", "13"]) == "scancel 12 13"
    assert slurm.submit_command("/x y/abc", [3, 1]) == "bash '/x y/abc/jobs/submit.sh' --only-beams 1,3"


def test_array_specs_and_the_recorded_array_state() -> None:
    assert slurm.parse_array_spec("0-3,5%2") == [0, 1, 2, 3, 5]
    assert slurm.parse_array_spec("7") == [7]
    assert slurm.array_state(["RUNNING", "COMPLETED", "COMPLETED"]) == "COMPLETED:2,RUNNING:1"


def test_gpu_usage_per_partition_counts_each_node_once() -> None:
    text = (
        "n1                  gpu*          gpu:a100:4(S:0-1),shard:8     gpu:a100:2(IDX:0-1),shard:0\n"
        "n1                  gpu*          gpu:a100:4(S:0-1),shard:8     gpu:a100:2(IDX:0-1),shard:0\n"
        "n2                  gpu           gpu:4                          gpu:0\n"
        "n3                  cpu           (null)                         (null)\n"
    )
    assert slurm.parse_gpu_usage(text) == [
        {"partition": "cpu", "gpus_total": 0, "gpus_used": 0},
        {"partition": "gpu", "gpus_total": 8, "gpus_used": 2},
    ]
