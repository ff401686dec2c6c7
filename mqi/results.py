"""Results home: a case's ``results/`` downloaded, every file's sha256 checked, one rename.

A failed case is delivered like a completed one: its summary (every beam's reason) and
whatever doses exist, even none.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mqi.bundle import SUMMARY_NAME, Summary, sha256_file, summary_json
from mqi.errors import OperationalError
from mqi.transport import RemoteFiles, Transport


class DeliveryError(OperationalError):
    """A result file arrived damaged; nothing was put in place, the next cycle tries again."""


@dataclass
class Delivery:
    target: Path
    missing: list[str] = field(default_factory=list)
    """Files the summary lists that were not on the cluster."""


def deliver_results(
    transport: Transport, remote_results: str, results_root: Path, case_id: str, summary: Summary
) -> Delivery:
    """Download a case's results through a temporary folder, verify every sha256, rename into place."""
    results_root.mkdir(parents=True, exist_ok=True)
    target = results_root / case_id
    staging = results_root / f".{case_id}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    listed = sorted(summary.files)
    present = RemoteFiles(transport).present(remote_results, listed) if listed else set()
    try:
        transport.get_files(remote_results, staging, [name for name in listed if name in present])
        for name in sorted(present):
            if sha256_file(staging / name) != summary.files[name]:
                raise DeliveryError(
                    f"{name} of {case_id} arrived damaged (sha256 mismatch); retrying next cycle"
                )
        (staging / SUMMARY_NAME).write_text(summary_json(summary), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        old = results_root / f".{case_id}.old-{os.getpid()}"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
    return Delivery(target, [name for name in listed if name not in present])
