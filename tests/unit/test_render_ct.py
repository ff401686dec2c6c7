"""CT normalisation: MOQUI aborts on CT pixels that are not signed int16.

An unsigned CT is written into input/ as signed int16 with the same HU
(HU = stored * RescaleSlope + RescaleIntercept); values that do not fit are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from mqi.render import RenderedBundle, RenderError, render_bundle, write_ct_slice
from tests.unit.test_render_cases import APTG, aptg_case, ct_grid, needs_aptg, render_config

pytestmark = needs_aptg


def hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    slope = float(ds.get("RescaleSlope", 1))
    return ds.pixel_array.astype(np.float64) * slope + float(ds.get("RescaleIntercept", 0))


def unsigned_slice(tmp_path: Path, values: np.ndarray, slope: float, intercept: float) -> Path:
    """An APTG CT slice with other stored values and rescale."""
    ds = pydicom.dcmread(APTG / "ct" / "CT_030.dcm")
    ds.PixelData = values.astype("<u2").tobytes()
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    path = tmp_path / "slice.dcm"
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> RenderedBundle:
    return render_bundle(aptg_case(), render_config(), tmp_path_factory.mktemp("ct") / "b")


def test_unsigned_ct_becomes_int16_with_the_same_hu(bundle: RenderedBundle) -> None:
    case = aptg_case()
    assert case.ct.pixel_representation == 0
    assert bundle.manifest.grid.normalised_to_int16 is True
    for index, src in enumerate(case.ct.files):
        written = bundle.path / "input" / f"CT_{index:04d}.dcm"
        ds = pydicom.dcmread(written)
        assert (ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (1, 16, 16, 15)
        assert ds.pixel_array.dtype == np.int16
        np.testing.assert_array_equal(hu(written), hu(src))
        original = pydicom.dcmread(src)
        assert ds.ImagePositionPatient == original.ImagePositionPatient
        assert ds.SOPInstanceUID == original.SOPInstanceUID


def test_slices_are_named_in_z_order(bundle: RenderedBundle) -> None:
    z = [
        float(pydicom.dcmread(bundle.path / "input" / f"CT_{i:04d}.dcm").ImagePositionPatient[2])
        for i in range(61)
    ]
    assert z == sorted(z) and z[0] == -150.0 and z[-1] == 150.0
    assert bundle.manifest.grid.origin == tuple(
        float(v) for v in pydicom.dcmread(bundle.path / "input/CT_0000.dcm").ImagePositionPatient
    )


def test_fractional_slope_and_intercept_keep_hu(tmp_path: Path) -> None:
    values = np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) % 6000
    src = unsigned_slice(tmp_path, values, slope=0.5, intercept=-1024.5)
    dst = tmp_path / "out.dcm"
    assert write_ct_slice(src, dst, "slice 0") is True
    np.testing.assert_array_equal(hu(dst), hu(src))
    assert pydicom.dcmread(dst).pixel_array.dtype == np.int16


def test_values_that_do_not_fit_int16_are_refused(tmp_path: Path) -> None:
    values = np.full((128, 128), 1000, dtype=np.uint16)
    values[5, 7] = 40000  # HU 38976 with intercept -1024: beyond int16
    bad = unsigned_slice(tmp_path, values, slope=1.0, intercept=-1024.0)
    case = aptg_case()
    case = case.model_copy(update={"ct": case.ct.model_copy(update={"files": [*case.ct.files[:-1], bad]})})
    out = tmp_path / "bundle"
    with pytest.raises(
        RenderError, match=r"CT slice 60 \(slice\.dcm\): HU -24\.\.38976 do not fit signed int16"
    ):
        render_bundle(case, render_config(), out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slice.dcm"]


def test_signed_ct_is_copied_unchanged(bundle: RenderedBundle, tmp_path: Path) -> None:
    signed = sorted((bundle.path / "input").glob("CT_*.dcm"))
    case = aptg_case()
    case = case.model_copy(update={"ct": ct_grid(signed)})
    again = render_bundle(case, render_config(), tmp_path / "again")
    assert again.manifest.grid.normalised_to_int16 is False
    for index, src in enumerate(signed):
        assert (again.path / "input" / f"CT_{index:04d}.dcm").read_bytes() == src.read_bytes()
