"""DICOM networking: a Storage SCP spooling incoming cases, an SCU sending results.

What the rest of mqi calls:

- `serve(config.dicom, on_ready, stop)`: run the listener until ``stop`` is set; calls
  ``on_ready(case_folder)`` once per complete case (the same intake -> submit path as
  `mqi scan`). `StorageSCP` is the same with start/check/stop in the caller's hands.
- `send_files(destination, paths)` -> `SendOutcome`; `next_attempt_delay(attempts, retry)`.
- `echo(destination)` and `port_free(bind, port)` for `mqi doctor`.
- `read_receiving(spool_dir)`: the cases a running listener still waits for (`mqi status`).
"""

from __future__ import annotations

import logging

from mqi.dicomnet.readiness import CaseSet, Decision, Instance, SpoolIndex, assemble, case_key, decide
from mqi.dicomnet.scp import StorageSCP, serve
from mqi.dicomnet.scu import FileStatus, SendOutcome, echo, next_attempt_delay, port_free, send_files
from mqi.dicomnet.spool import read_receiving

# pynetdicom's debug output prints whole datasets (patient names included): never let it through.
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

__all__ = [
    "CaseSet",
    "Decision",
    "FileStatus",
    "Instance",
    "SendOutcome",
    "SpoolIndex",
    "StorageSCP",
    "assemble",
    "case_key",
    "decide",
    "echo",
    "next_attempt_delay",
    "port_free",
    "read_receiving",
    "send_files",
    "serve",
]
