"""Results home: a case's ``results/`` downloaded, every file's sha256 checked, one rename."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from mqi.bundle import SUMMARY_NAME, sha256_file
from mqi.errors import OperationalError
from mqi.transport import Transport


def deliver_results(
    transport: Transport, remote_results: str, results_root: Path, case_id: str, summary: dict[str, Any]
) -> Path:
    """Download a case's results through a temporary folder, verify every sha256, rename into place."""
    results_root.mkdir(parents=True, exist_ok=True)
    target = results_root / case_id
    staging = results_root / f".{case_id}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    files: dict[str, str] = summary.get("files", {})
    transport.get_files(remote_results, staging, sorted(files))
    for name, digest in files.items():
        if sha256_file(staging / name) != digest:
            shutil.rmtree(staging, ignore_errors=True)
            raise OperationalError(
                f"{name} of {case_id} arrived damaged (sha256 mismatch); retrying next cycle"
            )
    (staging / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    if target.exists():
        old = results_root / f".{case_id}.old-{os.getpid()}"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
    return target
