"""Slurm command lines and parsers, on output recorded from the real dev cluster (Slurm 22.05)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mqi import slurm
from mqi.slurm import Phase

RECORDED = Path(__file__).parent / "recorded"


def read(name: str) -> str:
    return (RECORDED / name).read_text()


def by_id(records: list[slurm.JobRecord]) -> dict[str, slurm.JobRecord]:
    return {record.job_id: record for record in records}


def test_sacct_parses_every_end_state_of_an_array_and_its_dependants() -> None:
    jobs = by_id(slurm.parse_sacct(read("sacct_mixed.txt")))
    assert set(jobs) == {"6_0", "6_1", "6_2", "6_3", "6_4", "6_5", "7", "8", "9"}
    assert slurm.phase_of(jobs["6_0"]) == (Phase.COMPLETED, None)
    assert slurm.phase_of(jobs["6_1"]) == (Phase.FAILED, "exit code 3")
    assert slurm.phase_of(jobs["6_2"]) == (Phase.FAILED, "signal 11")
    phase, reason = slurm.phase_of(jobs["6_3"])
    assert phase is Phase.CANCELLED and reason == "cancelled by 0"
    assert jobs["6_5"].raw_id == "6" and jobs["6_5"].array_index == 5
    assert jobs["6_1"].node == "vm" and jobs["6_5"].node is None
    assert jobs["7"].comment is None  # pending jobs carry no comment in sacct yet
    assert jobs["6_0"].comment == "mqi:rec1"


def test_sacct_expands_a_collapsed_pending_array() -> None:
    jobs = by_id(slurm.parse_sacct(read("sacct_pending_array.txt")))
    assert sorted(jobs) == ["15_0", "15_1", "15_2", "15_3", "15_4"]
    assert jobs["15_3"].state == "PENDING" and jobs["15_3"].reason == "JobArrayTaskLimit"
    assert slurm.phase_of(jobs["15_0"])[0] is Phase.RUNNING


def test_squeue_shows_dependency_never_satisfied() -> None:
    jobs = by_id(slurm.parse_squeue(read("squeue_after_cancel.txt")))
    assert slurm.never_satisfied(jobs["7"])
    assert not slurm.never_satisfied(jobs["9"])
    assert jobs["9"].reason == "JobHeldUser"
    assert jobs["8"].dependency == "afterok:6_*(failed)"


def test_squeue_running_array_tasks_have_nodes() -> None:
    jobs = by_id(slurm.parse_squeue(read("squeue_running.txt")))
    assert jobs["6_3"].state == "RUNNING" and jobs["6_3"].node == "vm"
    assert slurm.parse_job_name(jobs["6_3"].name) == ("rec1", "simulate")


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
