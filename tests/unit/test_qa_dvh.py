"""DVH: analytic cases exact to the voxel size, holes, and dicompyler-core on APTG."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mqi.qa.dvh import Structure, dvh_metrics, read_structures, structure_doses, structure_dvh
from mqi.qa.grids import DoseGrid, read_dose
from tests.unit.qa_fixtures import aptg_file, aptg_plan_dose

SPACING = 1.0


def grid_of(function, half: float = 30.0) -> DoseGrid:
    axis = np.arange(-half + SPACING / 2, half, SPACING)  # voxel centres never on a box edge
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    return DoseGrid(function(x, y, z), axis, axis, axis)


def circle(radius: float, points: int = 360) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def square(half: float) -> np.ndarray:
    return np.array([[-half, -half], [half, -half], [half, half], [-half, half]])


def sphere(radius: float, kind: str = "PTV") -> Structure:
    planes = {}
    for z in np.arange(-radius + SPACING / 2, radius, SPACING):  # planes on the grid
        planes[float(z)] = [circle(math.sqrt(radius**2 - z**2))]
    return Structure(1, "Sphere", kind, planes)


def box(half: float, hole: float | None = None, kind: str = "ORGAN") -> Structure:
    planes = {}
    for z in np.arange(-half + SPACING / 2, half, SPACING):
        planes[float(z)] = [square(half)] + ([square(hole)] if hole else [])
    return Structure(2, "Box", kind, planes)


def test_uniform_dose_in_a_sphere_gives_that_dose_for_every_metric() -> None:
    grid = grid_of(lambda x, y, z: np.where(x**2 + y**2 + z**2 <= 22.0**2, 2.0, 0.5))
    metrics = structure_dvh(sphere(20.0), grid, prescription_gy=2.0, curve_max_gy=2.0)
    assert metrics is not None
    for value in (
        metrics.d98,
        metrics.d95,
        metrics.d50,
        metrics.d2,
        metrics.dmean,
        metrics.dmax,
        metrics.dmin,
    ):
        assert value == pytest.approx(2.0)
    assert metrics.v95 == 100.0
    true_volume = 4 / 3 * math.pi * 20.0**3 / 1000
    surface = 4 * math.pi * 20.0**2 * SPACING / 1000  # one voxel layer
    assert abs(metrics.volume_cc - true_volume) < surface / 2
    assert metrics.curve_volume_percent[0] == 100.0 and metrics.curve_volume_percent[-1] == 100.0


def test_linear_gradient_in_a_box_gives_quantiles_exact_to_one_voxel() -> None:
    gradient = 0.05  # Gy per mm along x
    grid = grid_of(lambda x, y, z: 2.0 + gradient * x)
    half = 20.0
    metrics = structure_dvh(box(half), grid, None, 4.0)
    assert metrics is not None
    one_voxel = gradient * SPACING
    # x is uniform on [-half, half]: Dv = dose at the (1 - v) quantile of x
    for value, fraction in (
        (metrics.d98, 0.98),
        (metrics.d95, 0.95),
        (metrics.d50, 0.50),
        (metrics.d2, 0.02),
    ):
        expected = 2.0 + gradient * (half - 2 * half * fraction)
        assert abs(value - expected) <= one_voxel
    assert metrics.dmean == pytest.approx(2.0, abs=1e-9)
    assert metrics.volume_cc == pytest.approx((2 * half) ** 3 / 1000)
    assert (
        metrics.d1cc is not None
        and abs(metrics.d1cc - (2.0 + gradient * (half - 1000 / (2 * half) ** 2))) <= one_voxel
    )


def test_a_contour_inside_another_is_a_hole() -> None:
    grid = grid_of(lambda x, y, z: np.ones_like(x))
    doses, sample_volume, missing = structure_doses(box(20.0, hole=10.0), grid)
    assert missing == 0
    assert doses.size * sample_volume / 1000 == pytest.approx((40**2 - 20**2) * 40 / 1000)


def test_a_structure_off_the_grid_has_no_metrics() -> None:
    grid = grid_of(lambda x, y, z: np.ones_like(x), half=5.0)
    far = Structure(3, "Far", "ORGAN", {100.0: [square(2.0)]})
    assert structure_dvh(far, grid, None, 1.0) is None
    assert dvh_metrics(np.empty(0), 1.0, None, 1.0) is None


def _dicompyler():
    import pydicom
    import pydicom.dicomio

    # dicompyler-core 0.5.6 imports pydicom 2's read_file; pydicom 3 only has dcmread.
    if not hasattr(pydicom.dicomio, "read_file"):
        pydicom.dicomio.read_file = lambda fp, defer_size=None, **kw: pydicom.dcmread(fp, **kw)  # type: ignore[attr-defined]
    return pytest.importorskip("dicompylercore.dvhcalc")


def test_aptg_structures_match_dicompyler_within_one_percent() -> None:
    dvhcalc = _dicompyler()
    rs, rd = aptg_file("RS*.dcm"), aptg_plan_dose()
    dose = read_dose(rd)
    checked = 0
    for structure in read_structures(rs):
        ours = structure_dvh(structure, dose, None, float(dose.values.max()))
        if ours is None or ours.volume_cc <= 5.0:
            continue
        theirs = dvhcalc.get_dvh(str(rs), str(rd), structure.number)
        assert ours.volume_cc == pytest.approx(theirs.volume, rel=0.01), structure.name
        assert ours.dmean == pytest.approx(theirs.mean, rel=0.01), structure.name
        for ours_value, theirs_value in ((ours.d95, theirs.D95.value), (ours.d2, theirs.D2.value)):
            if theirs_value > 0.05:  # D95 of the External is ~0 Gy: nothing relative to compare
                assert ours_value == pytest.approx(theirs_value, rel=0.01), structure.name
        checked += 1
    assert checked == 4  # Cube101010, Slope101004, External, PMMA
