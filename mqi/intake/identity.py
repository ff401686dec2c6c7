"""The two identities of a case: ``case_id`` for people, ``case_uid`` for the cluster.

``case_uid`` is the only identity that leaves the workstation, so it is a hash
that carries no name: neither the folder's nor the patient's.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

MAX_NAME_LENGTH = 40
PLAN_HASH_LENGTH = 8
UID_LENGTH = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitise_name(name: str) -> str:
    """A folder name reduced to ``[A-Za-z0-9._-]``, at most 40 characters."""
    cleaned = _UNSAFE.sub("_", name).strip("._-")[:MAX_NAME_LENGTH].rstrip("._-")
    return cleaned or "case"


def case_id(case_dir: Path, plan_uid: str) -> str:
    digest = hashlib.sha256(plan_uid.encode()).hexdigest()[:PLAN_HASH_LENGTH]
    return f"{sanitise_name(case_dir.resolve().name)}-{digest}"


def case_uid(case_dir: Path, plan_uid: str) -> str:
    # os.fsencode: a folder name that is not UTF-8 hashes by its bytes (the same bytes as
    # str.encode for every UTF-8 name, so existing uids do not change)
    key = b"mqi-case:" + plan_uid.encode() + os.fsencode(case_dir.resolve())
    return hashlib.sha256(key).hexdigest()[:UID_LENGTH]


def rejected_case_id(case_dir: Path) -> str:
    """A case id for a folder whose plan could not be read."""
    return f"{sanitise_name(case_dir.name)}-{opaque(os.fsencode(case_dir))[:8]}"


def opaque(text: str | bytes) -> str:
    """A 16-hex-digit hash of ``text`` (names never leave the workstation, hashes may)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return hashlib.sha256(data).hexdigest()[:16]
