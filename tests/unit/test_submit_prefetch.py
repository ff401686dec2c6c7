"""The survey that runs while the bundle renders: its answer or its error, once; a retry asks again."""

from __future__ import annotations

import threading

import pytest

from mqi.errors import TransportError
from mqi.submit import Prefetch, Survey


def test_the_first_take_is_the_background_answer_and_a_retry_asks_again() -> None:
    calls: list[str] = []
    started = threading.Event()

    def survey() -> Survey:
        calls.append(threading.current_thread().name)
        started.set()
        return Survey([], "none", {"n": str(len(calls))})

    prefetch = Prefetch(survey)
    assert started.wait(5)
    assert prefetch.take().remote_sums == {"n": "1"}
    assert prefetch.take().remote_sums == {"n": "2"}
    assert calls == ["mqi-survey", threading.current_thread().name]


def test_an_error_in_the_background_is_raised_by_the_first_take_only() -> None:
    answers: list[Survey | Exception] = [TransportError("dropped", transient=True), Survey([], "final", {})]

    def survey() -> Survey:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    prefetch = Prefetch(survey)
    prefetch.wait()
    with pytest.raises(TransportError, match="dropped"):
        prefetch.take()
    assert prefetch.take().remote_kind == "final"
