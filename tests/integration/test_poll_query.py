"""The poll's query over SSH on the real cluster: job ids on stdin in any number, one sacct
per 128 KB of ids, and a held job found by sacct and squeue alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from mqi import slurm
from mqi.clock import now_utc
from mqi.config import load_config
from mqi.slurm.backend import CliBackend
from mqi.transport import open_transport

pytestmark = pytest.mark.cluster


def test_20000_ids_go_on_stdin_to_two_sacct_calls_over_ssh(
    make_config: Callable[..., Path], unique: str
) -> None:
    config = load_config(make_config())
    transport = open_transport(config.cluster)
    backend = CliBackend(transport)
    since = now_utc() - timedelta(minutes=1)
    submitted = transport.run(
        f"sbatch --parsable --hold -p {config.slurm.partition} -t 1 -o /dev/null "
        f"-J {slurm.job_name(unique, 'post')} --wrap true"
    )
    job_id = slurm.parse_sbatch_parsable(submitted.stdout)
    try:
        # 20,000 ids of 7 digits (ids no job has here) around the real one: 160 KB, two lists
        ids = [job_id, *(str(i) for i in range(1_000_000, 1_020_000))]
        deadline = time.monotonic() + 30
        while True:  # slurmdbd learns of a new job a few seconds after squeue does
            answer = backend.query(ids, since)
            assert answer.error is None and not answer.accounting_down, answer
            assert answer.records is not None
            sacct = slurm.parse_sacct(transport.run(slurm.sacct_commands([job_id], since)[0]).stdout)
            if sacct or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert answer.commands == 3  # two sacct lists and squeue, whatever the number of ids
        record = answer.records[job_id]
        assert record.state == "PENDING" and record.name == slurm.job_name(unique, "post")
        assert [r.job_id for r in sacct] == [job_id]  # accounting knows it too
        # and stdin of a megabyte comes back whole while output streams (no deadlock)
        text = "".join(f"{i:07d} {'x' * 60}\n" for i in range(16_000))
        echoed = transport.run("cat; echo done >&2", stdin=text, timeout=60)
        assert echoed.ok and echoed.stdout == text and echoed.stderr == "done\n"
    finally:
        transport.run(f"scancel {job_id}")
        transport.close()
