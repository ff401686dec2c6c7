"""The post job's QA: stand-in doses against the synthetic TPS dose, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mqi.bundle import sha256_file, write_manifest
from mqi.post.run import postprocess_bundle
from mqi.testing.synthetic import TpsDoseModel, build_case
from tests.unit.engine_fixtures import SMALL_CT, SMALL_SPACING, build_bundle, run_all_beams


def bundle_with_tps(root: Path, model: TpsDoseModel | None) -> Path:
    made = build_bundle(root / "bundle")
    tps_files = []
    if model is not None:
        # the same arguments as the bundle's case: the same plan, now with its TPS dose
        case = build_case(
            root / "tps-case",
            beams=2,
            ct_shape=SMALL_CT,
            spacing=SMALL_SPACING,
            unsigned_ct=False,
            tps_dose=model,
        )
        (made.path / "tps").mkdir()
        shutil.copy2(case.doses[0], made.path / "tps" / "RD_plan.dcm")
        tps_files = ["tps/RD_plan.dcm"]
    write_manifest(made.path, made.manifest.model_copy(update={"tps_doses": tps_files}))
    run_all_beams(made, process=False)
    return made.path


@pytest.mark.parametrize(
    ("model", "verdict"),
    [(TpsDoseModel(), "pass"), (TpsDoseModel(shift_mm=(4.0, 0.0, 0.0)), "fail"), (None, "not-compared")],
)
def test_post_job_writes_qa_json_and_report_with_the_verdict(tmp_path: Path, model, verdict: str) -> None:
    bundle = bundle_with_tps(tmp_path, model)
    summary = postprocess_bundle(bundle)
    results = bundle / "results"
    qa = json.loads((results / "qa.json").read_text())
    assert qa["schema"] == "mqi.qa/1" and qa["verdict"] == verdict
    assert summary["qa"]["verdict"] == verdict
    assert summary["files"]["qa.json"] == sha256_file(results / "qa.json")
    if model is None:
        assert qa["reasons"] == ["no TPS dose in the case"] and not (results / "report.pdf").exists()
    else:
        assert summary["files"]["report.pdf"] == sha256_file(results / "report.pdf")
        assert summary["qa"]["first_pass_rate"] == qa["comparisons"][0]["gamma"][0]["pass_rate"]
        assert qa["engine"]["parameters"]["ParticlesPerHistory"] == "1"
        # written on the cluster: the plan's uid, never its label or the patient id (issue 11)
        assert qa["plan_label"] == qa["patient_id"] == "" and qa["plan_uid"]
        assert "MQI-SYNTH-001" not in (results / "qa.json").read_text()
        assert "Synthetic^Phantom" not in (results / "qa.json").read_text()


def test_a_broken_tps_dose_is_recorded_not_fatal(tmp_path: Path) -> None:
    bundle = bundle_with_tps(tmp_path, TpsDoseModel())
    (bundle / "tps" / "RD_plan.dcm").write_bytes(b"not dicom")
    summary = postprocess_bundle(bundle)
    assert summary["plan_status"] == "completed"
    qa = json.loads((bundle / "results" / "qa.json").read_text())
    assert qa["verdict"] == "not-compared" and any("cannot read as DICOM" in r for r in qa["reasons"])
