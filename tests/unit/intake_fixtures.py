"""Small synthetic cases and the tools to break them, for the intake tests.

Test modules import ``case_fixture`` and ``pristine_fixture`` to get the ``case`` and
``pristine`` fixtures.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mqi.intake import IntakeOptions, IntakeResult, read_case
from mqi.testing.synthetic import SyntheticCase, build_case

APTG = Path(__file__).parents[2].parent / "shared" / "data" / "aptg-plan03"
PATIENT_NAME = "Doe^Jane"
SMALL = {
    "beams": 2,
    "layers": 3,
    "spots_per_layer": 9,
    "ct_shape": (24, 24, 12),
    "spacing": (2.0, 2.0, 2.5),
    "patient_name": PATIENT_NAME,
}


def build_small(folder: Path, **changes: object) -> SyntheticCase:
    return build_case(folder, **{**SMALL, **changes})  # type: ignore[arg-type]


def relocate(case: SyntheticCase, folder: Path) -> SyntheticCase:
    """The same case copied to ``folder``."""
    shutil.copytree(case.folder, folder)

    def moved(path: Path) -> Path:
        return folder / path.relative_to(case.folder)

    return dataclasses.replace(
        case,
        folder=folder,
        plan=moved(case.plan),
        ct=[moved(p) for p in case.ct],
        rtstruct=moved(case.rtstruct),
        doses=[moved(p) for p in case.doses],
    )


@pytest.fixture(scope="session", name="pristine")
def pristine_fixture(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCase:
    return build_small(tmp_path_factory.mktemp("pristine") / "case")


@pytest.fixture(name="case")
def case_fixture(pristine: SyntheticCase, tmp_path: Path) -> SyntheticCase:
    """A fresh copy of the small synthetic case, free to break."""
    return relocate(pristine, tmp_path / "Case 01")


def edit(path: Path, change: Callable[[Dataset], object]) -> None:
    """Read a DICOM file, change it, write it back."""
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def new_uid(ds: Dataset) -> None:
    """Make ``ds`` another instance (as a copied file would need)."""
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid


def codes(result: IntakeResult) -> list[str]:
    return [p.code for p in result.errors]


def warning_codes(result: IntakeResult) -> list[str]:
    return [p.code for p in result.warnings]


def check(folder: Path, **options: object) -> IntakeResult:
    return read_case(folder, IntakeOptions(**options))  # type: ignore[arg-type]
