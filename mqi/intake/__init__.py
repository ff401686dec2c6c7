"""Case intake: find the DICOM objects of a case folder by content, check them, build the Case.

Public API::

    options = IntakeOptions.from_config(config, plan_uid=None)
    result = read_case(case_dir, options)      # never raises for bad input
    result.valid, result.case, result.errors, result.warnings, result.to_json()
    is_ready(case_dir, config.readiness)       # for `mqi scan`
    folder_fingerprint(case_dir)               # re-check a rejected case only when it changed
"""

from __future__ import annotations

from mqi.intake.codes import Code
from mqi.intake.identity import case_id, case_uid, sanitise_name
from mqi.intake.model import Case, Problem
from mqi.intake.reader import IntakeOptions, IntakeResult, read_case
from mqi.intake.readiness import folder_fingerprint, is_ready

__all__ = [
    "Case",
    "Code",
    "IntakeOptions",
    "IntakeResult",
    "Problem",
    "case_id",
    "case_uid",
    "folder_fingerprint",
    "is_ready",
    "read_case",
    "sanitise_name",
]
