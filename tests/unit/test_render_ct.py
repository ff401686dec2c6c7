"""CT normalisation: MOQUI aborts on CT pixels that are not signed int16.

An unsigned CT is written into input/ as signed int16 with the same HU
(HU = stored * RescaleSlope + RescaleIntercept); values that do not fit are refused.
A render over an earlier bundle of the case reuses the int16 slices of unchanged sources.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from mqi.bundle import CT_SOURCES_NAME, sha256_file
from mqi.intake.model import Case
from mqi.render import RenderedBundle, RenderError, _write_ct_bytes, render_bundle, write_ct_slice
from tests.unit.test_render_cases import APTG, aptg_case, bundle_bytes, ct_grid, needs_aptg, render_config

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


def ct_inodes(bundle: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in sorted((bundle / "input").glob("CT_*.dcm"))}


def with_last_slice(case: Case, path: Path) -> Case:
    return case.model_copy(update={"ct": case.ct.model_copy(update={"files": [*case.ct.files[:-1], path]})})


def test_a_second_render_of_the_case_reuses_its_int16_ct(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    render_bundle(aptg_case(), render_config(), out)
    first = ct_inodes(out)
    again = render_bundle(aptg_case(), render_config(), out)
    assert ct_inodes(out) == first, "the slices of the first render are the ones in the bundle"
    assert again.manifest.grid.normalised_to_int16 is True
    fresh = render_bundle(aptg_case(), render_config(), tmp_path / "fresh")
    assert bundle_bytes(out) == bundle_bytes(fresh.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "fresh"]


def test_a_changed_ct_slice_is_converted_again(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    render_bundle(aptg_case(), render_config(), out)
    first = ct_inodes(out)
    values = np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) % 3000
    changed = unsigned_slice(tmp_path, values, slope=1.0, intercept=-1024.0)
    case = with_last_slice(aptg_case(), changed)
    again = render_bundle(case, render_config(), out)
    now = ct_inodes(out)
    assert now["CT_0060.dcm"] != first["CT_0060.dcm"]
    assert {k: v for k, v in now.items() if k != "CT_0060.dcm"} == {
        k: v for k, v in first.items() if k != "CT_0060.dcm"
    }
    written = out / "input" / "CT_0060.dcm"
    np.testing.assert_array_equal(hu(written), hu(changed))
    assert again.manifest.files["input/CT_0060.dcm"] == sha256_file(written)
    fresh = render_bundle(case, render_config(), tmp_path / "fresh")
    assert bundle_bytes(out) == bundle_bytes(fresh.path)


def test_a_slice_altered_in_the_earlier_bundle_is_not_reused(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    render_bundle(aptg_case(), render_config(), out)
    altered = out / "input" / "CT_0005.dcm"
    original = altered.read_bytes()
    data = bytearray(original)
    data[-2:] = bytes([data[-2] ^ 0xFF, data[-1]])  # one pixel, as a disk error or an editor might
    altered.write_bytes(bytes(data))
    assert altered.read_bytes() != original
    render_bundle(aptg_case(), render_config(), out)
    fresh = render_bundle(aptg_case(), render_config(), tmp_path / "fresh")
    assert bundle_bytes(out) == bundle_bytes(fresh.path)


def test_a_record_of_another_conversion_is_not_reused(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    render_bundle(aptg_case(), render_config(), out)
    first = ct_inodes(out)
    record = out / CT_SOURCES_NAME
    record.write_text(record.read_text().replace('"conversion": "', '"conversion": "older-'))
    render_bundle(aptg_case(), render_config(), out)
    assert not set(ct_inodes(out).values()) & set(first.values())


def variant(tmp_path: Path, kind: str) -> Path:
    """An unsigned APTG slice written by pydicom with one unusual trait."""
    ds = pydicom.dcmread(APTG / "ct" / "CT_030.dcm")
    if kind == "bounds":  # US values whose VR follows PixelRepresentation: dropped by the rewrite
        for tag, value in ((0x00280106, 0), (0x00280107, 4000), (0x00280120, 0)):
            ds.add_new(tag, "US", value)
    elif kind == "sequence-and-private":
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, "1.2.3.4"
        ds.ReferencedImageSequence = pydicom.Sequence([item])
        ds.private_block(0x0029, "SITE", create=True).add_new(0x01, "LO", "kept")
    elif kind == "fractional":
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024.25"
    elif kind == "group-length":
        ds.add_new(0x00280000, "UL", 0)
    elif kind == "no-intercept":
        del ds.RescaleIntercept
    elif kind == "implicit":
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    path = tmp_path / f"{kind}.dcm"
    little = kind != "implicit"
    pydicom.dcmwrite(path, ds, implicit_vr=not little, little_endian=True)
    return path


VARIANTS = ["plain", "bounds", "sequence-and-private", "fractional"]
VARIANTS += ["group-length", "no-intercept", "implicit"]  # these go through pydicom's writer whole


@pytest.mark.parametrize("kind", VARIANTS)
def test_the_spliced_rewrite_is_the_file_pydicom_writes(tmp_path: Path, kind: str) -> None:
    """Only the changed elements are encoded anew; the result is byte for byte what
    pydicom's writer makes of the whole dataset."""
    data = variant(tmp_path, kind).read_bytes()
    assert _write_ct_bytes(data, tmp_path / "spliced.dcm", "slice 0") is True
    assert _write_ct_bytes(data, tmp_path / "whole.dcm", "slice 0", splice=False) is True
    assert (tmp_path / "spliced.dcm").read_bytes() == (tmp_path / "whole.dcm").read_bytes()
    written = pydicom.dcmread(tmp_path / "spliced.dcm")
    assert written.PixelRepresentation == 1 and "SmallestImagePixelValue" not in written
    np.testing.assert_array_equal(hu(tmp_path / "spliced.dcm"), hu(tmp_path / f"{kind}.dcm"))


def test_every_aptg_slice_splices_to_what_pydicom_writes(tmp_path: Path) -> None:
    for src in sorted((APTG / "ct").glob("CT_*.dcm")):
        data = src.read_bytes()
        _write_ct_bytes(data, tmp_path / "spliced.dcm", src.name)
        _write_ct_bytes(data, tmp_path / "whole.dcm", src.name, splice=False)
        assert (tmp_path / "spliced.dcm").read_bytes() == (tmp_path / "whole.dcm").read_bytes(), src.name
