"""Shared inputs of the QA tests: the APTG doses and small analytic RT Dose datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

APTG = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "aptg-plan03"


def aptg_file(pattern: str) -> Path:
    if not APTG.is_dir():
        pytest.skip(f"APTG data not found at {APTG}")
    found = sorted(APTG.glob(pattern))
    if not found:
        pytest.skip(f"no {pattern} in {APTG}")
    return found[0]


def aptg_plan_dose() -> Path:
    return aptg_file("RD*.3000.*.dcm")


def aptg_beam_doses() -> list[Path]:
    return [aptg_file("RD*.4000.*.dcm"), aptg_file("RD*.5000.*.dcm")]


def rt_dose_dataset(
    dose: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    *,
    shape: tuple[int, int, int] = (6, 5, 4),  # frames, rows, columns
    spacing: tuple[float, float, float] = (2.0, 2.5, 3.0),  # column, row, frame step (mm)
    position: tuple[float, float, float] = (-10.0, -20.0, -30.0),
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    absolute_offsets: bool = False,
    scaling: float = 1e-3,
    frame_of_reference: str = "1.2.3.4",
) -> Dataset:
    """An RT Dose whose stored values are ``dose(x, y, z)`` at each voxel's patient position."""
    frames, rows, columns = shape
    dc, dr, df = spacing
    along_row = np.asarray(orientation[:3], dtype=float)
    along_column = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(along_row, along_column)
    origin = np.asarray(position, dtype=float)
    k, j, i = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(columns), indexing="ij")
    points = (
        origin[:, None, None, None]
        + along_row[:, None, None, None] * (i * dc)
        + along_column[:, None, None, None] * (j * dr)
        + normal[:, None, None, None] * (k * df)
    )
    counts = np.round(dose(points[0], points[1], points[2]) / scaling).astype("<u4")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "RTDOSE"
    ds.FrameOfReferenceUID = frame_of_reference
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [dr, dc]
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    start = float(origin @ normal) if absolute_offsets else 0.0
    ds.GridFrameOffsetVector = [start + f * df for f in range(frames)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "EFFECTIVE"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = scaling
    ds.PixelData = counts.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
