"""Every string that reaches a shell goes through mqi.shell.quote: hostile names stay names.

The remote file operations run here through a real bash (LocalTransport) on folders whose
names hold `$(...)`, backticks, `;`, a newline and spaces; nothing they carry may run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mqi import slurm
from mqi.transport import LocalTransport, RemoteFiles
from mqi.transport.files import bundle_listing_command, parse_bundle_listing, publish_command, remove_command

PACKAGE = Path(__file__).resolve().parents[2] / "mqi"
HOSTILE = ["a b", "$(touch PWNED)", "`touch PWNED`", "x; touch PWNED", "line\nbreak", "it's", '"q"', "-rf"]


def test_only_mqi_shell_quotes() -> None:
    """One quoting helper: no other module imports shlex or pipes."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "shell.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name in ("shlex", "pipes") for name in names):
                offenders.append(str(path.relative_to(PACKAGE.parent)))
    assert offenders == []


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # a payload that ran would leave PWNED here
    return tmp_path


@pytest.mark.parametrize("name", HOSTILE)
def test_remote_file_operations_keep_hostile_names(place: Path, name: str) -> None:
    files = RemoteFiles(LocalTransport())
    remote = str(place / "scratch" / name / "uid")
    (place / "scratch" / name).mkdir(parents=True)
    partial = Path(remote + ".partial")
    (partial / "beams" / "1").mkdir(parents=True)
    (partial / "input.dcm").write_text("dicom")
    (partial / "beams" / "1" / "engine.out").write_text("engine says hello\n")

    listing = files.transport.run(bundle_listing_command(remote)).stdout
    kind, sums = parse_bundle_listing(listing)
    assert kind == "partial" and set(sums) == {"input.dcm"}

    published = files.transport.run(publish_command(remote, from_partial=True) + "true")
    assert published.ok, published.stderr
    assert Path(remote, "logs").is_dir() and not partial.exists()
    assert Path(remote).stat().st_mode & 0o777 == 0o700

    assert files.read_text(f"{remote}/input.dcm") == "dicom"
    assert files.read_text(f"{remote}/missing") is None
    assert files.exists(remote) and not files.exists(remote + "x")
    assert files.present(remote, ["input.dcm", "nope", name]) == {"input.dcm"}
    tails = files.newest_and_tails(f"{remote}/logs", "*.out", [f"{remote}/beams/1/engine.out"])
    assert "engine says hello" in tails

    assert files.transport.run(remove_command(f"{remote}/input.dcm") + "true").ok
    assert not Path(remote, "input.dcm").exists()
    files.reopen_upload(remote)
    assert partial.is_dir() and not Path(remote).exists()
    files.discard_partial(remote)
    assert not partial.exists() and Path(remote).parent.is_dir()
    (partial / "again").mkdir(parents=True)
    files.set_aside(remote, "20260101T000000")
    assert not partial.exists()
    assert not (place / "PWNED").exists()


@pytest.mark.parametrize("name", HOSTILE)
def test_slurm_command_lines_keep_hostile_paths(place: Path, name: str) -> None:
    """submit.sh's path is one word: bash is asked to run exactly that file."""
    bundle = place / name
    (bundle / "jobs").mkdir(parents=True)
    (bundle / "jobs" / "submit.sh").write_text('echo "ran with $*"\n')
    result = LocalTransport().run(slurm.submit_command(str(bundle), [0, 2]))
    assert result.stdout == "ran with --only-beams 0,2\n"
    assert not (place / "PWNED").exists()
