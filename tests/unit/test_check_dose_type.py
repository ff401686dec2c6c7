"""A dose-type mismatch is a clear error at `mqi check` time, not a silent 10% in the QA."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mqi.testing.synthetic import build_case
from tests.helpers import run_mqi


def _check(tmp_path: Path, moqui: dict) -> tuple[int, dict]:
    case = tmp_path / "case"
    if not case.exists():
        build_case(case, ct_shape=(16, 16, 6), layers=1, spots_per_layer=4)
    config = tmp_path / "mqi.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "moqui": moqui}))
    result = run_mqi("check", str(case), "--config", str(config), "--json")
    return result.returncode, json.loads(result.stdout)


def test_a_physical_mc_dose_against_an_effective_tps_dose_is_refused(tmp_path: Path) -> None:
    code, report = _check(tmp_path, {"dose_type": "PHYSICAL"})
    assert code == 2
    assert [e["code"] for e in report["errors"]] == ["DOSE_TYPE_MISMATCH"]
    assert "RBE" in report["errors"][0]["message"]


def test_an_effective_label_on_an_rbe_1_engine_is_refused(tmp_path: Path) -> None:
    code, report = _check(
        tmp_path, {"dose_type": "EFFECTIVE", "parameters": {"ParticlesPerHistory": 1000, "RBE": 1}}
    )
    assert code == 2 and report["errors"][0]["code"] == "DOSE_TYPE_MISMATCH"


def test_matching_dose_types_pass(tmp_path: Path) -> None:
    code, report = _check(tmp_path, {"dose_type": "EFFECTIVE"})
    assert code == 0, report["errors"]
