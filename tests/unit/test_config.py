"""Config loading: every rule a user can trip over gives one line naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mqi.config import Config, find_config_file, load_config, parse_config
from mqi.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mqi.yaml"
    path.write_text(text)
    return path


def test_defaults_are_complete() -> None:
    config = parse_config({})
    assert config.slurm.default_priority in config.slurm.priorities
    assert config.cluster.transport == "ssh"
    assert config.moqui.parameters["ParticlesPerHistory"] > 0


def test_example_config_is_valid_and_documents_every_section(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "mqi.example.yaml"
    config = load_config(example)
    assert isinstance(config, Config)
    data = yaml.safe_load(example.read_text())
    assert set(data) == set(Config.model_fields) - {"source"}


def test_bad_yaml_names_line_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "slurm:\n  partition: gpu\n   bad: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'slurm.gpu_per_beam'"):
        load_config(write(tmp_path, "slurm:\n  gpu_per_beam: 2\n"))


def test_wrong_type_is_named_with_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"slurm.gpus_per_beam: .*'two'"):
        load_config(write(tmp_path, "slurm:\n  gpus_per_beam: two\n"))


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "bogus: 1\nslurm:\n  max_parallel_beams: 0\n"))
    assert "bogus" in str(err.value) and "max_parallel_beams" in str(err.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("slurm:\n  time_limit: two hours\n", "not a Slurm time"),
        ("slurm:\n  default_priority: asap\n", "default_priority 'asap'"),
        ("slurm:\n  extra_directives: ['-N 1']\n", "one long sbatch option"),
        ("cluster:\n  remote_dir: scratch/mqi\n", "absolute path"),
        ("cluster:\n  transport: ftp\n", "cluster.transport"),
        ("- a list\n", "top level must be a mapping"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text))


def test_paths_expand_home_vars_and_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQI_TEST_ROOT", "/data/qa")
    monkeypatch.setenv("HOME", "/home/physicist")
    config = load_config(
        write(tmp_path, "watch_dir: $MQI_TEST_ROOT/in\nresults_dir: ~/res\nstate_dir: state\n")
    )
    assert config.watch_dir == Path("/data/qa/in")
    assert config.results_dir == Path("/home/physicist/res")
    assert config.state_dir == tmp_path / "state"


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MQI_CONFIG", raising=False)
    assert find_config_file() == tmp_path / "mqi.yaml"
    monkeypatch.setenv("MQI_CONFIG", "/etc/mqi.yaml")
    assert find_config_file() == Path("/etc/mqi.yaml")
    assert find_config_file(Path("x.yaml")) == Path("x.yaml")


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mqi init"):
        load_config(tmp_path / "absent.yaml")


def test_config_reference_is_generated_from_the_models() -> None:
    from mqi.configdoc import render_reference

    reference = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"
    assert reference.read_text() == render_reference(), (
        "docs/config-reference.md is stale: python -m mqi.configdoc > docs/config-reference.md"
    )
