"""When `mqi scan` takes a case folder: marker or quiet period, never during a copy."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mqi.config import Readiness
from mqi.intake import folder_fingerprint, is_ready

QUIET = Readiness(marker=None, quiet_seconds=60)
MARKER = Readiness(marker="_CASE_READY", quiet_seconds=60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    case = tmp_path / "case"
    (case / "ct").mkdir(parents=True)
    (case / "RP.dcm").write_bytes(b"plan")
    (case / "ct" / "CT_000.dcm").write_bytes(b"slice")
    return case


def later(seconds: float) -> float:
    return time.time() + seconds


def test_ready_after_the_quiet_period(folder: Path) -> None:
    ready, why = is_ready(folder, QUIET, now=later(0))
    assert not ready and "waiting" in why
    ready, why = is_ready(folder, QUIET, now=later(61))
    assert ready, why


def test_a_new_file_restarts_the_quiet_period(folder: Path) -> None:
    assert is_ready(folder, QUIET, now=later(61))[0]
    (folder / "ct" / "CT_001.dcm").write_bytes(b"late slice")
    future = (folder / "ct" / "CT_001.dcm").stat().st_mtime + 120
    os.utime(folder / "ct" / "CT_001.dcm", (future, future))
    assert not is_ready(folder, QUIET, now=later(61))[0]


def test_zero_quiet_seconds_is_ready_at_once(folder: Path) -> None:
    assert is_ready(folder, Readiness(marker=None, quiet_seconds=0), now=later(1))[0]


@pytest.mark.parametrize("name", ["CT_002.dcm.part", "upload.tmp", "x.PARTIAL", ".CT_003.dcm.a1b2c3"])
def test_partial_files_mean_not_ready(folder: Path, name: str) -> None:
    (folder / "ct" / name).write_bytes(b"half")
    ready, why = is_ready(folder, QUIET, now=later(3600))
    assert not ready
    assert name in why


def test_dot_folders_mean_not_ready(folder: Path) -> None:
    (folder / ".sync").mkdir()
    (folder / ".sync" / "state").write_text("x")
    assert not is_ready(folder, QUIET, now=later(3600))[0]


def test_finder_metadata_does_not_block(folder: Path) -> None:
    (folder / ".DS_Store").write_bytes(b"finder")
    assert is_ready(folder, QUIET, now=later(3600))[0]


def test_marker_decides_when_configured(folder: Path) -> None:
    ready, why = is_ready(folder, MARKER, now=later(3600))
    assert not ready and "_CASE_READY" in why
    (folder / "_CASE_READY").touch()
    ready, why = is_ready(folder, MARKER, now=later(0))
    assert ready, why


def test_dot_file_marker_is_allowed(folder: Path) -> None:
    readiness = Readiness(marker=".ready", quiet_seconds=60)
    (folder / ".ready").touch()
    assert is_ready(folder, readiness, now=later(0))[0]


def test_marker_with_a_partial_file_is_not_ready(folder: Path) -> None:
    (folder / "_CASE_READY").touch()
    (folder / "CT_009.dcm.part").write_bytes(b"half")
    assert not is_ready(folder, MARKER, now=later(0))[0]


def test_empty_or_missing_folder_is_not_ready(tmp_path: Path) -> None:
    assert is_ready(tmp_path, QUIET, now=later(3600)) == (False, "empty folder")
    assert is_ready(tmp_path / "missing", QUIET)[0] is False


def test_fingerprint_follows_the_content(folder: Path) -> None:
    first = folder_fingerprint(folder)
    assert folder_fingerprint(folder) == first
    (folder / "ct" / "CT_000.dcm").write_bytes(b"another slice")
    second = folder_fingerprint(folder)
    assert second != first
    (folder / "notes.txt").write_text("x")
    assert folder_fingerprint(folder) != second


def test_fingerprint_notices_a_rename(folder: Path) -> None:
    first = folder_fingerprint(folder)
    (folder / "RP.dcm").rename(folder / "RP_plan.dcm")
    assert folder_fingerprint(folder) != first
