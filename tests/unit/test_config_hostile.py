"""Config values a user can get wrong in ways that used to hang, crash or leak into job
scripts (issue 11): each is one ConfigError line naming the file and the key, and through
the CLI exit 2 without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mqi.config import load_config, load_optional_config
from mqi.errors import ConfigError


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "mqi.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("slurm:\n  partition: caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
        ("slurm:\n  partition: gpu\n".encode("utf-16"), "is not UTF-8 text"),
        ("slurm:\n  partition: a\n  partition: b\n", "key 'partition' is written twice"),
        ("slurm: {}\nslurm: {}\n", "key 'slurm' is written twice"),
        ("state_dir: /etc/passwd\n", "state_dir: /etc/passwd is not a folder"),
        ("results_dir: /etc/passwd/results\n", "results_dir: /etc/passwd/results is not a folder"),
        ("state_dir: $MQI_SURELY_UNDEFINED_VAR/state\n", "state_dir: $MQI_SURELY_UNDEFINED_VAR is not set"),
        ("watch_dir: ${MQI_SURELY_UNDEFINED_VAR}/in\n", "watch_dir: ${MQI_SURELY_UNDEFINED_VAR} is not set"),
        ('slurm:\n  partition: "gpu\\0x"\n', "slurm.partition: holds the control character '\\x00'"),
        ('slurm:\n  partition: "gpu\\nx"\n', "slurm.partition: holds the control character '\\n'"),
        ('slurm:\n  account: "a\\e[31m"\n', "slurm.account: holds the control character"),
        ('cluster:\n  remote_dir: "/scratch/a\\nb"\n', "cluster.remote_dir: holds the control character"),
        ('moqui:\n  parameters:\n    Scorer: "Dose\\nEvil 1"\n', "moqui.parameters.Scorer: holds"),
        ('slurm:\n  prologue: ["module load cuda\\nrm -rf x"]\n', "slurm.prologue[0]: holds"),
        ("slurm:\n  prologue: ['echo \"unterminated']\n", "slurm.prologue: is not complete shell code"),
        ("slurm:\n  prologue: ['if true; then']\n", "slurm.prologue: is not complete shell code"),
        (
            "moqui:\n  parameters:\n    ParticlesPerHistory: 1e999\n",
            "ParticlesPerHistory: '1e999' is not a finite",
        ),
        (
            "moqui:\n  parameters:\n    ParticlesPerHistory: .nan\n",
            "ParticlesPerHistory: nan is not a finite",
        ),
        ("poll:\n  interval_seconds: .inf\n", "poll.interval_seconds: Input should be a finite number"),
        ("poll:\n  interval_seconds: 1e999\n", "poll.interval_seconds: Input should be a finite number"),
        ("poll:\n  interval_seconds: -1\n", "poll.interval_seconds: Input should be greater than 0"),
        (
            "readiness:\n  quiet_seconds: -5\n",
            "quiet_seconds: Input should be greater than or equal",
        ),
        ("slurm:\n  time_limit: 120\n", 'write the time in quotes, e.g. "02:00:00"'),
    ],
)
def test_hostile_values_are_one_line_errors_naming_the_key(
    tmp_path: Path, text: str | bytes, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and fragment in message, message
    assert "\n" not in message


def test_unquoted_times_are_read_as_text_not_base_60(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "slurm:\n  time_limit: 2:00:00\n  post_time_limit: 30:00\n"))
    assert config.slurm.time_limit == "2:00:00"
    assert config.slurm.post_time_limit == "30:00"


def test_plain_numbers_are_still_numbers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "slurm:\n  gpus_per_beam: 2\npoll:\n  interval_seconds: 2.5\n"))
    assert config.slurm.gpus_per_beam == 2 and config.poll.interval_seconds == 2.5


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "\ufeffslurm:\n  partition: caf\xe9\n".encode()))
    assert config.slurm.partition == "caf\xe9"


def test_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "mqi.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(fifo)


def test_a_defined_variable_still_expands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQI_TEST_DATA", str(tmp_path))
    assert load_config(write(tmp_path, "state_dir: $MQI_TEST_DATA/state\n")).state_dir == tmp_path / "state"


def test_mqi_config_naming_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MQI_CONFIG", raising=False)
    assert load_optional_config() is None
    monkeypatch.setenv("MQI_CONFIG", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match=r"absent\.yaml"):
        load_optional_config()
    with pytest.raises(ConfigError, match=r"elsewhere\.yaml"):
        load_optional_config(tmp_path / "elsewhere.yaml")


@pytest.mark.parametrize(
    "text",
    [b"state_dir: caf\xe9\n", b"state_dir: /etc/passwd\n", b"slurm:\n  partition: a\n  partition: b\n"],
)
def test_the_cli_reports_a_bad_config_in_one_line(tmp_path: Path, text: bytes) -> None:
    path = write(tmp_path, text)
    (tmp_path / "case").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MQI_CONFIG", "MQI_DEBUG")}
    ran = subprocess.run(
        [sys.executable, "-m", "mqi", "check", "--config", str(path), str(tmp_path / "case")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr and "unexpected" not in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1 and str(path) in ran.stderr
