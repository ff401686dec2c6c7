"""docs/api.md's example, run as written against the dev cluster."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import mqi
from mqi.testing.synthetic import build_case
from tests.helpers import ROOT

pytestmark = pytest.mark.cluster


def _example() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_documented_example_runs(make_config: Callable[..., Path], tmp_path: Path) -> None:
    config = make_config()
    case_dir = tmp_path / "case_042"
    build_case(case_dir, ct_shape=(32, 32, 20), layers=2, spots_per_layer=9)
    script = (
        _example()
        .replace('"mqi.yaml"', repr(str(config)))
        .replace('"/data/new_cases/case_042"', repr(str(case_dir)))
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    status, results = done.stdout.split()
    assert status == "completed"
    assert sorted(p.name for p in Path(results).glob("*.dcm")) == [
        "RD.beam1.dcm",
        "RD.beam2.dcm",
        "RD.plan.dcm",
    ]


def test_a_config_path_may_be_a_str_or_a_path(make_config: Callable[..., Path]) -> None:
    config = make_config()
    for given in (str(config), config):
        with mqi.open(given) as session:
            assert session.status() == []
