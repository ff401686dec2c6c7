"""Slurm command lines and parsers, on output recorded from the real dev clusters: Slurm 22.05
(Debian's, in recorded/) and 25.11 (in recorded/25.11/), both by recorded/record.sh's scenario."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mqi import slurm
from mqi.slurm import Phase

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


def test_sacct_commands_chunk_ids_and_bound_the_start_time() -> None:
    since = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    commands = slurm.sacct_commands([str(i) for i in range(1, 2101)] + ["5_1", "5_2"], since)
    assert len(commands) == 3
    assert all(" -S " in command and "--parsable2" in command for command in commands)
    assert "-j 1,2,3," in commands[0]
    # just over one chunk: two equal calls (run side by side), not a full one and a stub
    commands = slurm.sacct_commands([str(i) for i in range(1, 1003)], since)
    assert [command.rsplit(" -j ", 1)[1].count(",") + 1 for command in commands] == [501, 501]
    (one,) = slurm.sacct_commands([str(i) for i in range(1, 1001)], since)
    assert one.endswith(",1000")


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
