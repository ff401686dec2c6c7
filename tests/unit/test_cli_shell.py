"""The command line as scripts and logs see it: formats, no boxes when piped, the version,
the config named before or after the command, and `import mqi` as a library."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

import mqi
from mqi.store import Store
from tests.helpers import run_mqi

BOX = set("─│┃━┏┓┗┛┡┩╇╭╮╰╯")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    with Store(tmp_path / "state" / "mqi.db") as store:
        for n, status in enumerate(["submitted", "failed"]):
            case_id = f"phantom{n}-0123abcd"
            store.upsert_case(case_id, case_uid=f"{n:016x}", source_dir=f"/cases/{n}", status=status)
            store.set_beams(case_id, [{"number": 1, "name": "b1"}, {"number": 2, "name": "b2"}])
        store.update_case("phantom1-0123abcd", error="beam 2: exit code 134\tand a tab")
    path = tmp_path / "mqi.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "watch_dir": str(tmp_path),
                "results_dir": str(tmp_path / "results"),
                "state_dir": str(tmp_path / "state"),
                "cluster": {"transport": "local", "remote_dir": "/tmp/mqi-unused"},
            }
        )
    )
    return path


def test_status_piped_is_plain_columns_without_boxes(config: Path) -> None:
    result = run_mqi("status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert not BOX & set(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["case", "status", "qa", "beams"]
    assert [line.split()[0] for line in lines[1:]] == ["phantom0-0123abcd", "phantom1-0123abcd"]


def test_status_tsv_cuts_and_csv_parses(config: Path) -> None:
    tsv = run_mqi("status", "--format", "tsv", "--config", str(config)).stdout
    assert [line.split("\t")[0] for line in tsv.splitlines()] == [
        "case",
        "phantom0-0123abcd",
        "phantom1-0123abcd",
    ]
    assert all(len(line.split("\t")) == 8 for line in tsv.splitlines()), "a tab in a value never splits a row"
    rows = list(csv.reader(io.StringIO(run_mqi("status", "-f", "csv", "--config", str(config)).stdout)))
    assert rows[0][:2] == ["case", "status"] and rows[2][1] == "failed" and "134" in rows[2][7]


def test_json_and_format_json_are_the_same(config: Path) -> None:
    one = json.loads(run_mqi("status", "--json", "--config", str(config)).stdout)
    two = json.loads(run_mqi("status", "--format", "json", "--config", str(config)).stdout)
    assert one == two and [case["status"] for case in one] == ["submitted", "failed"]


def test_an_unknown_format_is_a_usage_error(config: Path) -> None:
    result = run_mqi("status", "--format", "xml", "--config", str(config))
    assert result.returncode == 2 and result.stderr.startswith("mqi: error: --format must be one of")


def test_config_before_or_after_the_command(config: Path) -> None:
    before = run_mqi("--config", str(config), "status", "--json")
    after = run_mqi("status", "--json", "--config", str(config))
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout) == json.loads(after.stdout)


def test_version_and_completion() -> None:
    assert run_mqi("--version").stdout.strip() == f"mqi {mqi.__version__}"
    assert "--install-completion" in run_mqi("--help").stdout


def test_the_library_opens_a_str_or_a_path(config: Path) -> None:
    for given in (str(config), config):
        with mqi.open(given) as session:
            assert [case["case_id"] for case in session.status()] == [
                "phantom0-0123abcd",
                "phantom1-0123abcd",
            ]
            assert session.status("phantom1-0123abcd")["error"].startswith("beam 2")


def test_scan_with_a_missing_watch_dir_is_a_usage_error(config: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["watch_dir"] = str(tmp_path / "gone")
    config.write_text(yaml.safe_dump(data))
    result = run_mqi("scan", "--config", str(config))
    assert result.returncode == 2
    assert (
        result.stderr.count("\n") == 1 and "watch_dir" in result.stderr and "does not exist" in result.stderr
    )


def test_cron_log_and_mqi_log_rotate_by_size(config: Path, tmp_path: Path) -> None:
    from mqi.logs import rotate_file

    log = tmp_path / "state" / "cron.log"
    log.write_bytes(b"x" * 2000)
    assert (
        rotate_file(log, 1000, 2)
        and not log.exists()
        and (tmp_path / "state" / "cron.log.1").stat().st_size == 2000
    )
    log.write_bytes(b"y" * 2000)
    assert rotate_file(log, 1000, 2) and (tmp_path / "state" / "cron.log.2").read_bytes() == b"x" * 2000
    log.write_bytes(b"z" * 10)
    assert not rotate_file(log, 1000, 2), "a small file stays"
    with mqi.open(config) as session:
        session.log("a message from the service")
    assert "a message from the service" in (tmp_path / "state" / "logs" / "mqi.log").read_text()
