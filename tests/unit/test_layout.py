"""The rooms of DESIGN.md hold: `python -m mqi.devtools.layout` finds no breach, and finds planted ones."""

from __future__ import annotations

from pathlib import Path

from mqi.devtools import layout


def test_the_package_keeps_its_rooms() -> None:
    assert [str(b) for b in layout.check()] == []


def _plant(tmp_path: Path, name: str, text: str) -> list[str]:
    package = tmp_path / "mqi"
    path = package / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return [b.text for b in layout.check_file(path, package)]


def test_an_arrow_up_is_found(tmp_path: Path) -> None:
    assert _plant(tmp_path, "store/x.py", "from mqi.poll import Poller\n") == [
        "mqi.store imports mqi.poll, a higher layer"
    ]


def test_the_store_may_not_know_slurm(tmp_path: Path) -> None:
    assert _plant(tmp_path, "store/x.py", "from mqi import slurm\n") == [
        "mqi.store imports mqi.slurm, a higher layer"
    ]


def test_orchestration_modules_do_not_import_each_other(tmp_path: Path) -> None:
    found = _plant(tmp_path, "actions.py", "from mqi.poll import Poller\n")
    assert found == ["mqi.actions imports mqi.poll: orchestration modules share mqi.chain"]


def test_sql_and_slurm_text_stay_in_their_rooms(tmp_path: Path) -> None:
    text = 'Q = "SELECT * FROM cases"\nC = f"scancel -u me"\nD = "squeue -h --me"\n'
    assert _plant(tmp_path, "poll.py", text) == [
        "SQL outside mqi/store/",
        "Slurm command text outside mqi/slurm/",
        "Slurm command text outside mqi/slurm/",
    ]


def test_pyslurm_stays_in_the_slurm_room(tmp_path: Path) -> None:
    assert _plant(tmp_path, "poll.py", "import pyslurm\n") == ["pyslurm imported outside mqi/slurm/"]
    assert _plant(tmp_path, "slurm/x.py", "def f():\n    import pyslurm\n") == []


def test_prose_about_slurm_is_not_a_command(tmp_path: Path) -> None:
    text = '"""Runs sbatch -p gpu for you."""\nX = Field(1, description="sbatch --nice")\n'
    assert _plant(tmp_path, "config.py", text) == []
