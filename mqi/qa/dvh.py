"""Structures from an RT Structure Set, rasterised on a dose grid, and their DVH metrics.

On each contour plane the dose (interpolated between the grid's frames) is sampled at the
grid's pixel centres inside the plane's contours, combined by even-odd (XOR) filling as
dicompyler does: a contour inside another is a hole, disjoint contours add up. Each
sample stands for one pixel times the structure's plane spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from skimage.draw import polygon

from mqi.qa.grids import DoseGrid

TARGET_TYPES = frozenset({"PTV", "CTV", "GTV", "ITV"})
NOT_JUDGED_TYPES = frozenset(
    {"MARKER", "ISOCENTER", "REGISTRATION", "CONTROL", "SUPPORT", "FIXATION", "BOLUS"}
)
CURVE_POINTS = 101


class StructureSetError(ValueError):
    """An RT Structure Set that cannot be read; the message is one line."""


@dataclass(frozen=True)
class Structure:
    number: int
    name: str
    kind: str  # RTROIInterpretedType, upper case ("" when absent)
    planes: dict[float, list[np.ndarray]] = field(repr=False)  # z -> [(n, 2) x, y polygons]
    frame_of_reference_uid: str = ""

    @property
    def is_target(self) -> bool:
        return self.kind in TARGET_TYPES

    @property
    def plane_spacing(self) -> float | None:
        zs = sorted(self.planes)
        return float(np.median(np.diff(zs))) if len(zs) > 1 else None


def read_structures(path: Path) -> list[Structure]:
    """Every ROI with closed planar contours, in the file's order."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as err:
        raise StructureSetError(f"{Path(path).name}: cannot read as DICOM: {err}") from None
    names = {
        int(r.ROINumber): (str(r.get("ROIName", "")), str(r.get("ReferencedFrameOfReferenceUID", "")))
        for r in ds.get("StructureSetROISequence", []) or []
    }
    kinds = {
        int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "").upper()
        for o in ds.get("RTROIObservationsSequence", []) or []
    }
    structures = []
    for roi in ds.get("ROIContourSequence", []) or []:
        number = int(roi.ReferencedROINumber)
        planes: dict[float, list[np.ndarray]] = {}
        for contour in roi.get("ContourSequence", []) or []:
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
                continue
            points = np.asarray([float(v) for v in contour.get("ContourData", [])], dtype=float).reshape(
                -1, 3
            )
            if len(points) < 3:
                continue
            z = round(float(points[0, 2]), 3)
            planes.setdefault(z, []).append(points[:, :2])
        if planes:
            name, frame = names.get(number, (f"ROI {number}", ""))
            structures.append(Structure(number, name, kinds.get(number, ""), planes, frame))
    return structures


def plane_mask(polygons: list[np.ndarray], grid: DoseGrid) -> np.ndarray:
    """Boolean (y, x) mask of the dose grid's pixel centres inside one plane's contours,
    combined even-odd (a contour inside another is a hole)."""
    shape = (grid.y.size, grid.x.size)
    dx, dy, _ = grid.spacing
    plane = np.zeros(shape, dtype=bool)
    for points in polygons:
        rr, cc = polygon((points[:, 1] - grid.y[0]) / dy, (points[:, 0] - grid.x[0]) / dx, shape)
        inside = np.zeros(shape, dtype=bool)
        inside[rr, cc] = True
        plane ^= inside
    return plane


def dose_plane(grid: DoseGrid, z: float) -> np.ndarray | None:
    """The dose at height z, linear between frames; None outside the grid."""
    if grid.z.size == 1:
        return grid.values[0] if abs(z - grid.z[0]) <= 0.5 * grid.spacing[2] else None
    position = (z - grid.z[0]) / grid.spacing[2]
    if position < -1e-6 or position > grid.z.size - 1 + 1e-6:
        return None
    k0 = min(max(math.floor(position), 0), grid.z.size - 2)
    t = min(max(position - k0, 0.0), 1.0)
    return grid.values[k0] * (1.0 - t) + grid.values[k0 + 1] * t


def structure_doses(structure: Structure, grid: DoseGrid) -> tuple[np.ndarray, float, int]:
    """(dose of every sample, volume of one sample in mm^3, planes outside the dose grid).

    As clinical tools do: the dose on each contour plane (interpolated between frames) at
    the grid's pixel centres inside the contours, each sample standing for a pixel times
    the structure's plane spacing."""
    dx, dy, dz = grid.spacing
    thickness = structure.plane_spacing or dz
    samples = []
    missing = 0
    for z, polygons in sorted(structure.planes.items()):
        plane = dose_plane(grid, z)
        if plane is None:
            missing += 1
            continue
        samples.append(plane[plane_mask(polygons, grid)])
    doses = np.concatenate(samples) if samples else np.empty(0)
    return doses, dx * dy * thickness, missing


@dataclass(frozen=True)
class DVHMetrics:
    """Metrics of one structure on one dose (Gy, cm^3, %)."""

    volume_cc: float
    dmean: float
    dmax: float
    dmin: float
    d98: float
    d95: float
    d50: float
    d2: float
    d1cc: float | None
    v95: float | None  # % of the volume receiving >= 95% of the prescription (targets)
    curve_dose_gy: list[float]
    curve_volume_percent: list[float]


def dose_at_volume(sorted_desc: np.ndarray, volume_fraction: float) -> float:
    """The minimum dose of the hottest ``volume_fraction`` of voxels."""
    count = sorted_desc.size
    index = min(max(math.ceil(volume_fraction * count) - 1, 0), count - 1)
    return float(sorted_desc[index])


def dvh_metrics(
    doses: np.ndarray, voxel_volume_mm3: float, prescription_gy: float | None, curve_max_gy: float
) -> DVHMetrics | None:
    """Metrics of the voxel doses of one structure; None when it has no voxel."""
    if doses.size == 0:
        return None
    ordered = np.sort(doses.ravel())[::-1]
    volume_cc = ordered.size * voxel_volume_mm3 / 1000.0
    d1cc = dose_at_volume(ordered, 1.0 / volume_cc) if volume_cc >= 1.0 else None
    v95 = None
    if prescription_gy:
        v95 = 100.0 * float(np.count_nonzero(ordered >= 0.95 * prescription_gy)) / ordered.size
    levels = np.linspace(0.0, max(curve_max_gy, float(ordered[0]), 1e-9), CURVE_POINTS)
    ascending = ordered[::-1]
    at_least = ordered.size - np.searchsorted(ascending, levels, side="left")
    return DVHMetrics(
        volume_cc=volume_cc,
        dmean=float(ordered.mean()),
        dmax=float(ordered[0]),
        dmin=float(ordered[-1]),
        d98=dose_at_volume(ordered, 0.98),
        d95=dose_at_volume(ordered, 0.95),
        d50=dose_at_volume(ordered, 0.50),
        d2=dose_at_volume(ordered, 0.02),
        d1cc=d1cc,
        v95=v95,
        curve_dose_gy=[round(float(v), 5) for v in levels],
        curve_volume_percent=[round(100.0 * float(v) / ordered.size, 4) for v in at_least],
    )


def structure_dvh(
    structure: Structure, grid: DoseGrid, prescription_gy: float | None, curve_max_gy: float
) -> DVHMetrics | None:
    """DVH metrics of one structure on one dose; None when no contour lies on the grid."""
    doses, sample_volume, _ = structure_doses(structure, grid)
    return dvh_metrics(doses, sample_volume, prescription_gy if structure.is_target else None, curve_max_gy)
