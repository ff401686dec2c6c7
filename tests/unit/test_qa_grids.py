"""Dose grids from RT Dose: scaling, orientation, frame offsets, patient coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from mqi.qa.grids import DoseFileError, grid_from_dataset, read_dose, sample, sum_doses
from tests.unit.qa_fixtures import aptg_beam_doses, aptg_plan_dose, rt_dose_dataset, save


def linear(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return 5.0 + 0.1 * x + 0.02 * y + 0.003 * z + 10.0


def assert_matches_function(grid, function=linear) -> None:
    z, y, x = np.meshgrid(grid.z, grid.y, grid.x, indexing="ij")
    assert np.allclose(grid.values, function(x, y, z), atol=1e-3)
    for axis in (grid.x, grid.y, grid.z):
        assert np.all(np.diff(axis) > 0)


@pytest.mark.parametrize(
    "orientation",
    [
        (1, 0, 0, 0, 1, 0),  # head first supine
        (-1, 0, 0, 0, -1, 0),  # head first prone: x and y decrease
        (1, 0, 0, 0, 0, -1),  # coronal frames: rows go down in z
        (0, 1, 0, 0, 0, -1),  # sagittal frames
    ],
)
def test_every_axis_order_and_direction_lands_in_patient_coordinates(orientation) -> None:
    grid = grid_from_dataset(rt_dose_dataset(linear, orientation=orientation))
    assert_matches_function(grid)


def test_absolute_and_relative_frame_offsets_mean_the_same_grid() -> None:
    relative = grid_from_dataset(rt_dose_dataset(linear))
    absolute = grid_from_dataset(rt_dose_dataset(linear, absolute_offsets=True))
    assert np.allclose(relative.z, absolute.z) and np.allclose(relative.values, absolute.values)
    assert relative.z[0] == pytest.approx(-30.0)


@pytest.mark.parametrize("absolute", [False, True])
def test_decreasing_frame_offsets_are_flipped(absolute: bool) -> None:
    ds = rt_dose_dataset(linear)  # frame k at z = -30 + 3k
    frames, top = int(ds.NumberOfFrames), -30.0 + 3.0 * (int(ds.NumberOfFrames) - 1)
    values = np.frombuffer(ds.PixelData, dtype="<u4").reshape(frames, int(ds.Rows), int(ds.Columns))
    ds.PixelData = np.ascontiguousarray(values[::-1]).tobytes()  # now frame f at z = top - 3f
    ds.ImagePositionPatient = [-10.0, -20.0, top]
    ds.GridFrameOffsetVector = [(top if absolute else 0.0) - 3.0 * f for f in range(frames)]
    assert_matches_function(grid_from_dataset(ds))


def test_each_file_is_scaled_by_its_own_dose_grid_scaling_before_summing(tmp_path) -> None:
    a = save(rt_dose_dataset(linear, scaling=1e-3), tmp_path / "a.dcm")
    b = save(rt_dose_dataset(linear, scaling=7e-5), tmp_path / "b.dcm")
    total = sum_doses([read_dose(a), read_dose(b)])
    assert_matches_function(total, lambda x, y, z: 2 * linear(x, y, z))


def test_grids_of_different_spacing_and_origin_are_summed_in_patient_coordinates() -> None:
    coarse = grid_from_dataset(rt_dose_dataset(linear, shape=(8, 8, 8), spacing=(3.0, 3.0, 3.0)))
    fine = grid_from_dataset(
        rt_dose_dataset(linear, shape=(10, 10, 10), spacing=(2.0, 2.0, 2.0), position=(-9.0, -19.0, -29.0))
    )
    total = sum_doses([fine, coarse])  # on the fine grid
    assert_matches_function(total, lambda x, y, z: 2 * linear(x, y, z))


def test_sampling_outside_the_grid_gives_nan_not_zero() -> None:
    grid = grid_from_dataset(rt_dose_dataset(linear))
    values = sample(grid, np.array([grid.x[0] - 0.5, grid.x[0] + 0.5]), grid.y[:1], grid.z[:1])
    assert np.isnan(values[0, 0, 0]) and values[0, 0, 1] == pytest.approx(
        linear(grid.x[0] + 0.5, grid.y[0], grid.z[0]), abs=1e-3
    )


def test_oblique_and_relative_doses_are_refused_with_one_line() -> None:
    with pytest.raises(DoseFileError, match="oblique"):
        grid_from_dataset(rt_dose_dataset(linear, orientation=(0.8, 0.6, 0, -0.6, 0.8, 0)))
    ds = rt_dose_dataset(linear)
    ds.DoseUnits = "RELATIVE"
    with pytest.raises(DoseFileError, match="RELATIVE"):
        grid_from_dataset(ds)


def test_aptg_beam_doses_add_up_to_the_plan_dose() -> None:
    plan = read_dose(aptg_plan_dose())
    beams = sum_doses([read_dose(path) for path in aptg_beam_doses()])
    assert plan.values.shape == (110, 107, 107) and plan.spacing == (2.0, 2.0, 2.0)
    assert plan.origin == (-104.5, -105.5, -108.5)
    assert np.abs(beams.values - plan.values).max() < 5e-5
    assert plan.dose_type == "EFFECTIVE" and beams.beam_numbers == (1, 2)
