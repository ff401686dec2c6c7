"""The rendered job scripts run with bash in a bundle, as Slurm would run them there.

Slurm's part (scheduling, --chdir, SLURM_ARRAY_TASK_ID) is played by the working
directory and one environment variable; the real chain on the dev cluster is in
tests/integration/test_chain.py. The engine is the MOQUI stand-in
(`mqi-moqui-standin`) on a small synthetic case whose folder and beam names are
hostile shell text.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqi.render import RenderedBundle, render_bundle
from tests.unit.test_render_cases import aptg_case, render_config

synthetic = pytest.importorskip("mqi.testing.synthetic", reason="it builds the small test case")
STANDIN = Path(sys.executable).parent / "mqi-moqui-standin"
GRID = (16, 16, 8)  # rows, columns, slices
EXPECTED_BYTES = 16 * 16 * 8 * 8


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scripts") / "$(touch pwned); x"
    synthetic.build_case(
        folder,
        ct_shape=GRID,
        spacing=(4.0, 4.0, 5.0),
        layers=2,
        spots_per_layer=4,
        beam_names=["b1; rm -rf ~", "$(touch pwned)"],
    )
    return folder


@pytest.fixture(autouse=True)
def nothing_is_executed_from_names(case_dir: Path, tmp_path: Path) -> Iterator[None]:
    yield
    for root in (case_dir.parent, tmp_path, Path.cwd()):
        assert not list(root.rglob("pwned")), f"a name was executed as shell code under {root}"


def render(case_dir: Path, out: Path, **moqui: object) -> RenderedBundle:
    if not STANDIN.exists():
        pytest.skip(f"no MOQUI stand-in at {STANDIN}")
    settings = {"command": str(STANDIN), **moqui}
    config = render_config(moqui=settings, slurm={"prologue": []})
    return render_bundle(aptg_case(case_dir, case_uid="feedbeef01"), config, out)


def run(bundle: RenderedBundle, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "SLURM_CONF": "/nonexistent/slurm.conf", **env}
    return subprocess.run(
        ["bash", f"jobs/{script}"],
        cwd=bundle.path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def task(bundle: RenderedBundle, index: int) -> subprocess.CompletedProcess[str]:
    return run(bundle, "simulate.sbatch", SLURM_ARRAY_TASK_ID=str(index))


def fake_engine(tmp_path: Path, body: str) -> Path:
    """A bash engine: $out is the OutputDir of the parameter file it is given."""
    path = tmp_path / "engine.sh"
    path.write_text(f'#!/bin/bash\nout=$(awk \'$1=="OutputDir"{{print $2}}\' "$1")\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_a_beam_task_runs_the_engine_and_checks_its_output(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b")
    done = task(bundle, 1)
    assert done.returncode == 0, done.stdout + done.stderr
    beam = bundle.path / "beams" / "2"
    assert (beam / "exit_code").read_text() == "0\n"
    assert not (beam / "failure").exists()
    [output] = (beam / "output").iterdir()
    assert output.name.endswith("_0_Dose.raw") and output.stat().st_size == EXPECTED_BYTES
    assert "Time taken by MC engine" in (beam / "engine.out").read_text()
    assert "Time taken by MC engine" in done.stdout  # the tail reaches the Slurm log
    assert f"beam 2 done: beams/2/output/{output.name} ({EXPECTED_BYTES} bytes)" in done.stdout
    assert not (bundle.path / "beams" / "1" / "exit_code").exists()


def test_exit_0_without_output_fails_the_task(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b", command=f"{STANDIN} --fail-beams 1 --fail-mode no-output")
    done = task(bundle, 0)
    assert done.returncode == 1
    beam = bundle.path / "beams" / "1"
    assert (beam / "exit_code").read_text() == "0\n"
    assert (beam / "failure").read_text() == ("the engine exited 0 but wrote no beams/1/output/*_Dose.raw\n")
    assert "beam 1 FAILED" in done.stderr


def test_an_engine_crash_is_recorded_with_its_exit_code(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b", command=f"{STANDIN} --fail-beams 1 --fail-mode 134")
    done = task(bundle, 0)
    assert done.returncode == 134
    beam = bundle.path / "beams" / "1"
    assert (beam / "exit_code").read_text() == "134\n"
    assert "exited with code 134" in (beam / "failure").read_text()
    assert "what():" in done.stdout  # engine.err's tail in the Slurm log


def test_output_of_the_wrong_size_fails_the_task(case_dir: Path, tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, 'mkdir "$out" && printf 12345678 > "$out/B_0_Dose.raw"')
    bundle = render(case_dir, tmp_path / "b", command=str(engine))
    done = task(bundle, 0)
    assert done.returncode == 1
    assert (bundle.path / "beams/1/failure").read_text() == (
        f"the output file beams/1/output/B_0_Dose.raw has 8 bytes, expected {EXPECTED_BYTES}\n"
    )


def test_mhd_output_is_checked_through_its_raw_companion(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b", parameters={"ParticlesPerHistory": 1, "OutputFormat": "mhd"})
    done = task(bundle, 0)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "_0_Dose.raw (" in done.stdout


def test_a_stale_output_never_passes_for_a_new_run(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b")
    assert task(bundle, 0).returncode == 0
    # a retry whose engine exits 0 without writing must not find the first run's output
    engine = fake_engine(tmp_path, "exit 0")
    retry = render(case_dir, tmp_path / "retry", command=str(engine))
    stale = bundle.path / "beams/1/output"
    (retry.path / "beams/1/output").mkdir()
    for item in stale.iterdir():
        (retry.path / "beams/1/output" / item.name).write_bytes(item.read_bytes())
    (retry.path / "beams/1/failure").write_text("old reason\n")
    done = task(retry, 0)
    assert done.returncode == 1
    assert "wrote no" in (retry.path / "beams/1/failure").read_text()


def test_a_successful_retry_clears_the_old_failure(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b")
    (bundle.path / "beams/1/failure").write_text("old reason\n")
    assert task(bundle, 0).returncode == 0
    assert not (bundle.path / "beams/1/failure").exists()


@pytest.mark.parametrize("index", ["2", "-1", "x", ""])
def test_an_array_index_that_is_no_beam_fails_clearly(case_dir: Path, tmp_path: Path, index: str) -> None:
    bundle = render(case_dir, tmp_path / "b")
    done = run(bundle, "simulate.sbatch", SLURM_ARRAY_TASK_ID=index)
    assert done.returncode == 2
    assert f"array task id '{index}' is not a beam of this case (0-1)" in done.stderr


def test_scripts_refuse_to_run_outside_a_bundle_root(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b")
    for script in ("prepare.sbatch", "simulate.sbatch", "post.sbatch"):
        done = subprocess.run(
            ["bash", str(bundle.path / "jobs" / script)],
            cwd=tmp_path,
            env={**os.environ, "SLURM_ARRAY_TASK_ID": "0"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2, script
        assert "is not an mqi bundle root" in done.stderr


def test_prepare_passes_an_intact_bundle_and_runs_the_interpreter(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b", interpreter_command="bash -c 'pwd > interpreted.txt'")
    done = run(bundle, "prepare.sbatch")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (bundle.path / "interpreted.txt").read_text().strip() == str(bundle.path)
    assert "prepare done" in done.stdout


def test_prepare_fails_when_a_file_differs_from_the_manifest(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b")
    with (bundle.path / "input" / "RTPLAN.dcm").open("ab") as handle:
        handle.write(b"\0")
    (bundle.path / "beams/2/moqui_tps.in").unlink()
    done = run(bundle, "prepare.sbatch")
    assert done.returncode == 1
    assert "input/RTPLAN.dcm: FAILED" in done.stdout
    assert "beams/2/moqui_tps.in" in done.stdout + done.stderr
    assert "damaged or incomplete" in done.stderr


def test_prepare_fails_when_the_interpreter_fails(case_dir: Path, tmp_path: Path) -> None:
    bundle = render(case_dir, tmp_path / "b", interpreter_command="bash -c 'exit 3'")
    done = run(bundle, "prepare.sbatch")
    assert done.returncode == 1
    assert "the interpreter failed (exit code 3)" in done.stderr


def test_post_runs_the_configured_python_in_the_bundle_root(case_dir: Path, tmp_path: Path) -> None:
    bundle = render_bundle(
        aptg_case(case_dir, case_uid="feedbeef01"),
        render_config(
            cluster={"python": "bash -c 'echo \"$PWD $*\" > post.txt' python"},
            slurm={"prologue": []},
        ),
        tmp_path / "b",
    )
    done = run(bundle, "post.sbatch")
    assert done.returncode == 0, done.stderr
    assert (bundle.path / "post.txt").read_text() == f"{bundle.path} -m mqi.post .\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only-beams", "2"], "2 is not a distinct array index of this case (0-1)"),
        (["--only-beams", "0,0"], "0 is not a distinct array index"),
        (["--only-beams", "1;2"], "takes array indices like 0,2"),
        (["--only-beams=$(id)"], "takes array indices like 0,2"),
        (["--only-beams", ""], "takes array indices like 0,2"),
        (["--only-beams"], "usage: jobs/submit.sh [--only-beams I,J,...]"),
        (["--all"], "unknown argument: --all"),
    ],
)
def test_submit_refuses_bad_arguments_before_any_sbatch(
    case_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    bundle = render(case_dir, tmp_path / "b")
    done = subprocess.run(
        ["bash", str(bundle.path / "jobs/submit.sh"), *args],
        cwd=tmp_path,
        env={**os.environ, "SLURM_CONF": "/nonexistent/slurm.conf"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr
    assert "sbatch" not in done.stderr.replace("submit.sh", "")
