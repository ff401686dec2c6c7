"""QA of one bundle after post-processing: ``results/qa.json`` and ``results/report.pdf``.

Called by the post job once the RT Doses are written; also usable on the workstation on a
delivered results folder. It never raises: whatever goes wrong is recorded in qa.json as
``not-compared`` (missing inputs) or ``error`` (a bug or unreadable data) with the reason,
so QA can never fail the dose delivery.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import pydicom
from pydicom.errors import InvalidDicomError

from mqi.bundle import QA_CONFIG_NAME, Manifest, sha256_file
from mqi.config import QAConfig
from mqi.moqui_params import read_parameter_file
from mqi.qa.compare import run_case_qa
from mqi.qa.model import CaseQA
from mqi.qa.report import write_report

QA_NAME = "qa.json"
REPORT_NAME = "report.pdf"
"""Optional, in the bundle root: the workstation's ``qa:`` section as JSON; defaults when absent."""


def read_qa_config(bundle_dir: Path) -> QAConfig:
    path = Path(bundle_dir) / QA_CONFIG_NAME
    if not path.is_file():
        return QAConfig()
    return QAConfig.model_validate_json(path.read_text(encoding="utf-8"))


def _find_modality(folder: Path, modality: str) -> Path | None:
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
            continue
        if ds.get("Modality") == modality:
            return path
    return None


def engine_description(bundle_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """The engine family and the parameters of the first beam's moqui_tps.in (paths and
    per-beam keys left out)."""
    parameters: dict[str, str] = {}
    if manifest.beams:
        path = Path(bundle_dir) / manifest.beams[0].dir / "moqui_tps.in"
        try:
            effective = read_parameter_file(path)
            first = [effective.entry(key) for key in effective.as_dict()]  # what MOQUI uses
            parameters = {entry.key: entry.value for entry in first if entry is not None}
        except (OSError, ValueError):
            parameters = {}
    per_beam = {
        "parentdir",
        "dicomdir",
        "outputdir",
        "beamnumbers",
        "randomseed",
        "gpuid",
        "logfilepath",
        "overwriteresults",
        "useabsolutepath",
    }
    kept = {key: value for key, value in parameters.items() if key.lower() not in per_beam}
    return {"family": manifest.family, "parameters": kept}


def _error_qa(reason: str, qa: QAConfig, case_uid: str, verdict: str = "error") -> CaseQA:
    return CaseQA(
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        case_uid=case_uid,
        rbe=qa.rbe,
        verdict=verdict,  # type: ignore[arg-type]
        reasons=[reason],
    )


def bundle_qa(bundle_dir: Path, manifest: Manifest, summary: Mapping[str, Any], qa: QAConfig) -> CaseQA:
    """Compare the RT Doses just written (listed in ``summary``) with the bundle's TPS doses."""
    bundle_dir = Path(bundle_dir)
    results_dir = bundle_dir / "results"
    beams = {
        int(beam["number"]): results_dir / beam["file"]
        for beam in summary.get("beams", [])
        if beam.get("status") == "completed" and beam.get("file")
    }
    plan_file = summary.get("plan_file")
    input_dir = bundle_dir / "input"
    plan = bundle_dir / manifest.plan_file  # bundle-relative; older manifests name it inside input/
    plan = plan if plan.is_file() else input_dir / manifest.plan_file
    return run_case_qa(
        mc_plan=results_dir / plan_file if plan_file else None,
        mc_beams=beams,
        tps_files=[bundle_dir / name for name in manifest.tps_doses],
        qa=qa,
        plan_file=plan if plan.is_file() else None,
        structure_file=_find_modality(input_dir, "RTSTRUCT"),
        mc_dose_type=manifest.dose_type,
        engine=engine_description(bundle_dir, manifest),
        case_uid=manifest.case_uid,
    )


def _write_json(path: Path, qa: CaseQA) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(qa.to_json(), encoding="utf-8")
    os.replace(partial, path)


def write_bundle_qa(
    bundle_dir: Path, manifest: Manifest, summary: Mapping[str, Any], log: TextIO | None = None
) -> dict[str, str]:
    """Write results/qa.json (always) and results/report.pdf (when something was compared);
    returns {file name: sha256} of what was written. Never raises."""
    results_dir = Path(bundle_dir) / "results"
    qa_config = QAConfig()
    try:
        qa_config = read_qa_config(bundle_dir)
        if not qa_config.enabled:
            qa = _error_qa("QA disabled (qa.enabled false)", qa_config, manifest.case_uid, "not-compared")
        elif not manifest.tps_doses:
            qa = _error_qa("no TPS dose in the case", qa_config, manifest.case_uid, "not-compared")
        else:
            qa = bundle_qa(bundle_dir, manifest, summary, qa_config)
        # On the cluster the report names the case by its uid only: every cluster user can
        # read scratch. `mqi report CASE_ID` renders the page with plan label and PatientID
        # on the workstation.
        qa.plan_label = qa.patient_id = ""
    except Exception as err:  # QA must never fail the delivery of the doses
        detail = traceback.format_exception_only(type(err), err)[-1].strip()
        qa = _error_qa(f"QA failed: {detail}", qa_config, manifest.case_uid)
    written = {}
    report_problem = None
    if any(c._arrays is not None for c in qa.comparisons):
        try:
            write_report(qa, results_dir / REPORT_NAME)
            written[REPORT_NAME] = sha256_file(results_dir / REPORT_NAME)
        except Exception as err:  # a report problem must not lose qa.json
            report_problem = f"report not written: {type(err).__name__}: {err}"
            qa.reasons.append(report_problem)
    _write_json(results_dir / QA_NAME, qa)
    written[QA_NAME] = sha256_file(results_dir / QA_NAME)
    if log is not None:
        rate = f", {qa.first_criterion} {qa.first_pass_rate:.1f}%" if qa.first_pass_rate is not None else ""
        log.write(f"qa: {qa.verdict}{rate}" + (f" ({qa.reasons[0]})" if qa.reasons else "") + "\n")
        log.flush()
    return written


def recompute_case_qa(
    results_dir: Path,
    tps_files: list[Path],
    qa: QAConfig,
    *,
    plan_file: Path | None = None,
    structure_file: Path | None = None,
    stamp: str | None = None,
) -> tuple[CaseQA, Path, Path | None]:
    """``mqi report``: compare the delivered RT Doses in ``results_dir`` (RD.plan.dcm,
    RD.beam<n>.dcm) with the case folder's TPS doses and write ``qa.<stamp>.json`` and
    ``report.<stamp>.pdf`` beside the old ones (stamp: UTC time by default). Returns the
    result and the paths written (no PDF when nothing could be compared)."""
    results_dir = Path(results_dir)
    beams = {}
    for path in sorted(results_dir.glob("RD.beam*.dcm")):
        number = path.name.removeprefix("RD.beam").removesuffix(".dcm")
        if number.isdigit():
            beams[int(number)] = path
    plan = results_dir / "RD.plan.dcm"
    mc_type = "EFFECTIVE"
    summary = results_dir / "summary.json"
    if summary.is_file():
        mc_type = json.loads(summary.read_text(encoding="utf-8")).get("dose_type") or mc_type
    result = run_case_qa(
        mc_plan=plan if plan.is_file() else None,
        mc_beams=beams,
        tps_files=tps_files,
        qa=qa,
        plan_file=plan_file,
        structure_file=structure_file,
        mc_dose_type=mc_type,
        engine={"recomputed": "mqi report"},
    )
    if not tps_files:
        result.verdict, result.reasons = "not-compared", ["no TPS dose in the case"]
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = results_dir / f"qa.{stamp}.json"
    _write_json(json_path, result)
    pdf_path = None
    if any(c._arrays is not None for c in result.comparisons):
        pdf_path = write_report(result, results_dir / f"report.{stamp}.pdf")
    return result, json_path, pdf_path


def qa_status(qa_json: Path) -> dict[str, Any]:
    """The status line's fields from a qa.json: verdict, first criterion and its pass rate."""
    data = json.loads(Path(qa_json).read_text(encoding="utf-8"))
    return {
        "verdict": data.get("verdict"),
        "first_criterion": data.get("first_criterion"),
        "first_pass_rate": data.get("first_pass_rate"),
        "reasons": data.get("reasons", []),
    }
