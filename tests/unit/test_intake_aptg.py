"""The real APTG proton plan (RayStation export) through the intake."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from mqi.intake import IntakeOptions, read_case
from mqi.intake.report import render_check
from tests.unit.intake_fixtures import APTG

pytestmark = pytest.mark.skipif(
    not APTG.is_dir(), reason=f"shared test data not found at {APTG} (../shared/data from the project)"
)


def test_aptg_case_reads_with_the_patient_id_allowance() -> None:
    result = read_case(APTG, IntakeOptions(allow_patient_id_mismatch=True))
    assert result.valid, result.errors
    summary = result.to_json()
    assert [(b["number"], b["name"], b["gantry_angle"]) for b in summary["beams"]] == [
        (1, "b1", 90.0),
        (2, "b2", 270.0),
    ]
    for beam in summary["beams"]:
        assert beam["layers"] == 22
        assert beam["spots"] == 9218
        assert beam["meterset"] == pytest.approx(39294.15)
    assert summary["ct"] == {"slices": 61, "rows": 128, "columns": 128, "spacing": [2.0, 2.0, 5.0]}
    assert summary["structures"] == ["Cube101010", "Slope101004", "External", "PMMA", "LoPo"]
    assert len(summary["tps_doses"]) == 3
    assert summary["plan"]["fractions"] == 1
    assert {w["code"] for w in summary["warnings"]} == {"PATIENT_ID_MISMATCH"}


def test_aptg_case_is_invalid_without_the_allowance() -> None:
    result = read_case(APTG, IntakeOptions())
    assert not result.valid
    assert result.case is None
    assert {p.code for p in result.errors} == {"PATIENT_ID_MISMATCH"}
    # still summarised, so the user sees what the folder holds
    assert len(result.beams) == 2 and result.ct is not None


def test_aptg_per_beam_doses_name_their_beam() -> None:
    result = read_case(APTG, IntakeOptions(allow_patient_id_mismatch=True))
    assert sorted((d.summation_type, d.beam_number) for d in result.tps_doses) == [
        ("BEAM", 1),
        ("BEAM", 2),
        ("PLAN", None),
    ]


def test_aptg_layers_follow_the_plan() -> None:
    result = read_case(APTG, IntakeOptions(allow_patient_id_mismatch=True))
    assert result.case is not None
    layers = result.case.beams[0].layers
    assert layers[0].energy_mev == pytest.approx(149.4)
    assert layers[0].spots == 448
    assert sum(layer.meterset_weight for layer in layers) == pytest.approx(39294.15, rel=1e-6)


def test_aptg_never_shows_the_patient_name_or_id() -> None:
    result = read_case(APTG, IntakeOptions())
    console = Console(record=True, width=200)
    console.print(render_check(result))
    shown = console.export_text() + json.dumps(result.to_json())
    for fragment in ("Small water phantom", "anvest", "Dose_slopes", "LetMeas", "test_LET_ramp", "WTR303030"):
        assert fragment not in shown
