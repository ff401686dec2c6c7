"""The QA answer end to end on the dev cluster: a case whose TPS dose agrees passes, one whose
TPS dose is shifted fails with its pass rates in `mqi status`, one without a TPS dose is
not-compared with the reason; qa.json and report.pdf arrive with the doses, sha256-checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mqi.bundle import sha256_file
from mqi.testing.synthetic import TpsDoseModel, build_case
from tests.helpers import cancel_case_jobs, run_mqi, submit_json

pytestmark = pytest.mark.cluster


def test_pass_fail_and_not_compared(make_config: Callable[..., Path], tmp_path: Path) -> None:
    # The synthetic TPS dose is the stand-in's model at one particle per history.
    config = make_config(
        moqui={"parameters": {"ParticlesPerHistory": 1, "Scorer": "Dose", "OutputFormat": "raw"}}
    )
    shape = {"ct_shape": (32, 32, 20), "layers": 2, "spots_per_layer": 9}
    cases = {
        "agrees": build_case(tmp_path / "agrees", **shape),
        "shifted": build_case(tmp_path / "shifted", tps_dose=TpsDoseModel(shift_mm=(4.0, 0.0, 0.0)), **shape),
        "no-tps": build_case(tmp_path / "no-tps", with_tps_dose=False, **shape),
    }
    ids = {name: submit_json(config, tmp_path / name) for name in cases}
    try:
        polled = run_mqi("poll", "--wait", "--timeout", "300", "--config", str(config), timeout=400)
        assert polled.returncode == 0, polled.stderr
        status = {
            name: json.loads(run_mqi("status", sub["case_id"], "--config", str(config), "--json").stdout)
            for name, sub in ids.items()
        }
        listing = run_mqi("status", "--format", "tsv", "--config", str(config)).stdout
    finally:
        for sub in ids.values():
            cancel_case_jobs(sub["case_uid"])
    for name, case in status.items():
        assert case["status"] == "completed", (name, case)
        results = Path(case["results_dir"])
        summary = json.loads((results / "summary.json").read_text())
        assert "qa.json" in summary["files"], name
        for file, digest in summary["files"].items():
            assert sha256_file(results / file) == digest
    agrees, shifted, no_tps = status["agrees"], status["shifted"], status["no-tps"]
    assert agrees["qa"]["verdict"] == "pass" and (Path(agrees["results_dir"]) / "report.pdf").is_file()
    assert agrees["qa_details"]["first_pass_rate"] >= 95
    assert shifted["qa"]["verdict"] == "fail"
    assert shifted["qa_details"]["first_pass_rate"] < 95 and "%" in shifted["qa"]["summary"]
    assert no_tps["qa"]["verdict"] == "not-compared" and "no TPS dose" in no_tps["qa"]["summary"]
    assert not (Path(no_tps["results_dir"]) / "report.pdf").exists()
    rows = {line.split("\t")[0]: line.split("\t") for line in listing.splitlines()[1:]}
    assert rows[shifted["case_id"]][2].startswith("fail ") and rows[shifted["case_id"]][2].endswith("%")
    assert rows[agrees["case_id"]][2].startswith("pass ")

    recomputed = run_mqi(
        "report",
        agrees["case_id"],
        "--criteria",
        "2%/2mm/10%>=90",
        "--config",
        str(config),
        "--json",
        timeout=300,
    )
    assert recomputed.returncode == 0, recomputed.stderr
    again = json.loads(recomputed.stdout)
    assert again["verdict"] in ("pass", "review") and again["first_criterion"].startswith("2%/2mm")
    assert Path(again["report_pdf"]).is_file() and Path(again["report_pdf"]).parent == Path(
        agrees["results_dir"]
    )
    page = Path(again["report_pdf"]).read_bytes()
    assert b"Synthetic" not in page, "never the patient's name"
