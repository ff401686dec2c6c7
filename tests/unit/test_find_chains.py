"""Which chain of a case to adopt, from what Slurm reports (pure)."""

from __future__ import annotations

from mqi.chain import Chain, find_chains
from mqi.slurm import JobRecord

UID = "0123456789abcdef"


def job(job_id: str, step: str, state: str = "PENDING", uid: str = UID) -> JobRecord:
    return JobRecord(
        job_id, job_id, f"mqi.{uid}.{step}", state, state, None, 0, 0, None, None, None, None, None
    )


def test_a_complete_live_chain_is_adopted() -> None:
    records = [
        job("10", "prepare", "RUNNING"),
        job("11_0", "simulate"),
        job("11_1", "simulate"),
        job("12", "post"),
    ]
    assert find_chains(records, UID) == (Chain("10", "11", "12"), [])


def test_an_interrupted_submission_leaves_strays_to_cancel() -> None:
    chain, strays = find_chains([job("20", "prepare"), job("21_0", "simulate")], UID)
    assert chain is None and strays == ["20", "21"]


def test_the_newest_chain_wins_and_cancelled_chains_are_ignored() -> None:
    records = [
        job("10", "prepare", "COMPLETED"),
        job("11_0", "simulate", "COMPLETED"),
        job("12", "post", "COMPLETED"),
        job("20", "prepare", "CANCELLED"),
        job("21_0", "simulate", "CANCELLED"),
        job("22", "post", "CANCELLED"),
    ]
    assert find_chains(records, UID)[0] == Chain("10", "11", "12")


def test_a_finished_chain_is_not_adopted_for_a_case_the_store_never_saw() -> None:
    records = [
        job("10", "prepare", "COMPLETED"),
        job("11_0", "simulate", "COMPLETED"),
        job("12", "post", "COMPLETED"),
    ]
    assert find_chains(records, UID, live_only=True) == (None, [])


def test_other_cases_jobs_are_not_counted() -> None:
    records = [job("10", "prepare", uid="ffffffffffffffff"), job("12", "post", uid="ffffffffffffffff")]
    assert find_chains(records, UID) == (None, [])


def test_a_retry_chain_without_prepare_is_a_chain() -> None:
    records = [
        job("10", "prepare", "COMPLETED"),
        job("11_0", "simulate", "FAILED"),
        job("12", "post", "COMPLETED"),
        job("30_1", "simulate", "RUNNING"),
        job("31", "post"),
    ]
    assert find_chains(records, UID)[0] == Chain("10", "30", "31")
