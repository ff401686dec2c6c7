"""The spool folder: received instances, the case folders built from them, and what was handed over.

```
<spool>/received/<hash of study>/<hash of SOP instance>.dcm   every instance, stored once
<spool>/cases/<case key>/RP_….dcm RS_….dcm CT_….dcm RD_….dcm   one ready case (hard links)
<spool>/handed/<case key>                                      written after the case was handed over
<spool>/receiving.json                                         cases not handed over yet, for `mqi status`
```

Every name is a hash: no patient name or id appears in a path. Each instance is written to
a temporary file, flushed to disk and renamed, mode 0600, so a reader never sees half a file
and a crash leaves at most a temporary file that the next start removes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from mqi.dicomnet.readiness import Arrival, CaseSet, Decision, Instance, SpoolIndex, describe
from mqi.dicomnet.sop import PREFIX

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
NAME_HASH_LENGTH = 20
TEMP_SUFFIX = ".tmp"
RECEIVING_FILE = "receiving.json"
RECEIVING_SCHEMA = "mqi.dicom-receiving/1"


class SpoolFull(Exception):
    """The instance could not be stored for lack of space (or the disk refused it)."""


def _hash(text: str, length: int = NAME_HASH_LENGTH) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` into ``path`` via a temporary file in the same folder, fsync and rename."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}{TEMP_SUFFIX}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class Spool:
    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.received_dir = root / "received"
        self.cases_dir = root / "cases"
        self.handed_dir = root / "handed"

    def prepare(self) -> None:
        for folder in (self.root, self.received_dir, self.cases_dir, self.handed_dir):
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        return self.received_dir / _hash(f"study:{study_uid}") / f"{_hash(f'sop:{sop_instance_uid}')}.dcm"

    def store(self, instance: Instance, data: bytes) -> tuple[Path, bool]:
        """Write one instance unless already stored; (its path, True when written now).

        Raises SpoolFull when free space would drop below ``min_free_bytes`` or the disk
        refuses the write; nothing stored before is touched then.
        """
        path = self.instance_path(instance.study_uid, instance.sop_instance_uid)
        if path.exists():
            return path, False
        path.parent.mkdir(mode=DIR_MODE, exist_ok=True)
        free = shutil.disk_usage(path.parent).free
        if free - len(data) < self.min_free_bytes:
            raise SpoolFull(f"{free // 2**20} MB free, {self.min_free_bytes // 2**20} MB must stay free")
        try:
            write_atomically(path, data)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(os.strerror(err.errno)) from None
            raise
        return path, True

    def load(self) -> SpoolIndex:
        """The index of everything stored, from the files (arrival = their modification time).

        Leftover temporary files of an interrupted write are removed.
        """
        index = SpoolIndex()
        if not self.received_dir.is_dir():
            return index
        for folder in sorted(self.received_dir.iterdir()):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.name.endswith(TEMP_SUFFIX):
                    path.unlink(missing_ok=True)
                    continue
                try:
                    dataset = dcmread(path, stop_before_pixels=True)
                    mtime = path.stat().st_mtime
                except (OSError, InvalidDicomError, ValueError) as err:
                    log.warning("spool: cannot read %s: %s", path.name, err)
                    continue
                index.add(describe(dataset, path), Arrival(mtime))
        return index

    def handed_keys(self) -> set[str]:
        if not self.handed_dir.is_dir():
            return set()
        return {path.name for path in self.handed_dir.iterdir() if not path.name.startswith(".")}

    def case_dir(self, key: str) -> Path:
        return self.cases_dir / key

    def materialise(self, case: CaseSet) -> Path:
        """The case folder with exactly the case's instances (hard links into received/)."""
        final = self.case_dir(case.key)
        if final.is_dir():
            return final
        staging = self.cases_dir / f".{case.key}.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=DIR_MODE)
        for member in case.members:
            name = f"{PREFIX.get(member.sop_class_uid, 'OT')}_{_hash(f'sop:{member.sop_instance_uid}')}.dcm"
            target = staging / name
            try:
                os.link(member.path, target)
            except OSError:
                shutil.copy2(member.path, target)
                os.chmod(target, FILE_MODE)
        _fsync_dir(staging)
        os.rename(staging, final)
        _fsync_dir(self.cases_dir)
        return final

    def mark_handed(self, case: CaseSet) -> None:
        record = {
            "handed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "instances": len(case.members),
            "ct_images": len(case.ct),
            "doses": len(case.doses),
        }
        write_atomically(self.handed_dir / case.key, json.dumps(record).encode())

    def write_receiving(self, decisions: list[Decision]) -> None:
        """What the listener waits for, for other processes (`mqi status`); no UID or name."""
        cases = [
            {
                "case": d.case.key,
                "ready": d.ready,
                "why": d.why,
                "instances": len(d.case.members),
                "ct_images": len(d.case.ct),
                "doses": len(d.case.doses),
            }
            for d in decisions
        ]
        text = json.dumps({"schema": RECEIVING_SCHEMA, "cases": cases}, indent=1).encode()
        path = self.root / RECEIVING_FILE
        try:
            if path.read_bytes() == text:
                return
        except OSError:
            pass
        write_atomically(path, text)


def read_receiving(spool_dir: Path) -> list[dict[str, object]]:
    """The cases a running listener has not handed over yet: case key, ready, why, counts."""
    try:
        data = json.loads((spool_dir / RECEIVING_FILE).read_text())
    except (OSError, ValueError):
        return []
    cases = data.get("cases") if isinstance(data, dict) else None
    return cases if isinstance(cases, list) else []
