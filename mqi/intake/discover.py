"""Finding a case's DICOM objects by content, never by file name.

Every file under the case folder is looked at once. A file is DICOM when it
carries the ``DICM`` prefix (or is named ``*.dcm``, then read without it);
anything else is ignored. Objects are classified by SOP Class UID.

Delivery logs: every ``*.csv`` file under the case folder is a delivery log;
the log folder is the nearest folder holding all of them (e.g. ``logs/``).

Dot-files and dot-folders (except ``.DS_Store``) and ``*.part``/``*.tmp``/
``*.partial`` files are an unfinished copy: they are skipped with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import UID

from mqi.intake.codes import Code
from mqi.intake.ct import Slice, read_slice
from mqi.intake.dicomio import Header, UnreadableDicom, read_header
from mqi.intake.problems import Problems, listing

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_ION_PLAN = "1.2.840.10008.5.1.4.1.1.481.8"

PARTIAL_SUFFIXES = (".part", ".tmp", ".partial")
HARMLESS_HIDDEN = frozenset({".DS_Store"})
LOG_SUFFIX = ".csv"


@dataclass
class Inventory:
    """The classified content of a case folder."""

    ion_plans: list[Header] = field(default_factory=list)
    photon_plans: list[Header] = field(default_factory=list)
    ct: list[Slice] = field(default_factory=list)
    structure_sets: list[Header] = field(default_factory=list)
    doses: list[Header] = field(default_factory=list)
    other: list[Header] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    unreadable: int = 0

    @property
    def dicom_count(self) -> int:
        return sum(
            len(group)
            for group in (
                self.ion_plans,
                self.photon_plans,
                self.ct,
                self.structure_sets,
                self.doses,
                self.other,
            )
        )

    @property
    def log_dir(self) -> Path | None:
        if not self.log_files:
            return None
        return Path(os.path.commonpath([p.parent for p in self.log_files]))


def is_partial_name(name: str) -> bool:
    """A name that an unfinished copy leaves behind."""
    if name in HARMLESS_HIDDEN:
        return False
    return name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES)


def walk_files(
    root: Path, problems: Problems | None = None, *, folders: bool = False
) -> Iterator[os.DirEntry[str]]:
    """Every regular file (and sub-folder, with ``folders``) under ``root``, in a stable
    order (depth first, names sorted); folder symlinks are not followed. Iterative, so a
    tree of any depth is walked."""
    stack: list[Iterator[os.DirEntry[str]]] = []
    listed = _listing(root, problems)
    if listed is None:
        return
    stack.append(iter(listed))
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                if folders:
                    yield entry
                inner = _listing(Path(entry.path), problems)
                if inner is not None:
                    stack.append(iter(inner))
            elif entry.is_file():
                yield entry
        except OSError:
            continue


def _listing(folder: Path, problems: Problems | None) -> list[os.DirEntry[str]] | None:
    try:
        with os.scandir(folder) as scan:
            return sorted(scan, key=lambda e: e.name)
    except OSError as err:
        if problems is not None:
            problems.error(
                Code.CASE_DIR_UNREADABLE,
                f"{problems.rel(folder) or '.'}: cannot list the folder: {err.strerror}",
                folder,
            )
        return None


def discover(root: Path, problems: Problems) -> Inventory:
    inventory = Inventory()
    partial: list[str] = []
    prefix = len(os.path.join(root, ""))
    for entry in walk_files(root, problems):
        path = Path(entry.path)
        rel = entry.path[prefix:]
        if any(is_partial_name(part) for part in rel.split(os.sep)):
            partial.append(rel)
        elif entry.name.lower().endswith(LOG_SUFFIX):
            inventory.log_files.append(path)
        else:
            _read_one(path, inventory, problems)
    if partial:
        problems.warn(
            Code.PARTIAL_FILE,
            f"{listing(partial)}: skipped, looks like an unfinished copy; wait for the copy to finish",
            root / partial[0],
        )
    _note_other(inventory, problems)
    return inventory


def _read_one(path: Path, inventory: Inventory, problems: Problems) -> None:
    named_dicom = path.suffix.lower() == ".dcm"
    try:
        header = read_header(path)
        if header is None and named_dicom:
            header = read_header(path, force=True)
    except UnreadableDicom as err:
        inventory.unreadable += 1
        code = Code.DICOM_TRUNCATED if err.truncated else Code.DICOM_UNREADABLE
        problems.error(code, f"{problems.rel(path)}: {err}; replace it with a complete copy", path)
        return
    except OSError as err:
        inventory.unreadable += 1
        problems.error(Code.DICOM_UNREADABLE, f"{problems.rel(path)}: cannot read: {err.strerror}", path)
        return
    if header is not None:
        _classify(header, inventory, problems)


def _classify(header: Header, inventory: Inventory, problems: Problems) -> None:
    sop_class = header.sop_class_uid
    if sop_class == RT_ION_PLAN:
        inventory.ion_plans.append(header)
    elif sop_class == RT_PLAN:
        inventory.photon_plans.append(header)
    elif sop_class in (CT_IMAGE, RT_DOSE) and not header.pixel_data:
        inventory.unreadable += 1
        problems.error(
            Code.DICOM_TRUNCATED,
            f"{problems.rel(header.path)}: has no pixel data (cut short?); replace it with a complete copy",
            header.path,
        )
    elif sop_class == CT_IMAGE:
        # only the values the checks need: hundreds of full headers would keep the GC busy
        inventory.ct.append(read_slice(header))
    elif sop_class == RT_STRUCTURE_SET:
        inventory.structure_sets.append(header)
    elif sop_class == RT_DOSE:
        inventory.doses.append(header)
    else:
        inventory.other.append(header)


def _note_other(inventory: Inventory, problems: Problems) -> None:
    if not inventory.other:
        return
    kinds = sorted({UID(h.sop_class_uid).name for h in inventory.other})
    names = [problems.rel(h.path) for h in inventory.other]
    problems.warn(
        Code.OTHER_DICOM_IGNORED,
        f"{listing(names)}: ignored, not used for the simulation ({', '.join(kinds)})",
        inventory.other[0].path,
    )
