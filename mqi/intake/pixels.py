"""CT pixel data: decoding the stored values the way rendering does, and checking them.

Intake and rendering share :func:`stored_pixels`, so a slice that intake decoded is a
slice that rendering can rewrite: render never meets pixel data intake did not try.

Plain little-endian slices (the usual case) are checked without decoding: the length of
the Pixel Data value is known from the header walk, and the stored values of an unsigned
CT are read straight from the file to check that the int16 rewrite fits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

PLAIN_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})
INT16 = (-32768, 32767)


class PixelDataError(ValueError):
    """Pixel data that cannot be decoded into one Rows x Columns frame."""


def is_plain(transfer_syntax: str | None) -> bool:
    """Native little endian, not deflated: a slice that can be copied as it is."""
    return transfer_syntax in PLAIN_LITTLE_ENDIAN or transfer_syntax is None


def syntax_name(transfer_syntax: str | None) -> str:
    if not transfer_syntax:
        return "an unknown transfer syntax"
    uid = UID(transfer_syntax)
    return f"{uid.name} ({transfer_syntax})" if uid.name != transfer_syntax else transfer_syntax


def _mask(values: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Apply BitsStored as a DICOM reader does: unsigned values are masked, signed ones
    sign-extended from the high bit."""
    if bits_stored >= 16:
        return values.astype(np.int64)
    wide = values.astype(np.int64) & ((1 << bits_stored) - 1)
    if signed:
        sign = 1 << (bits_stored - 1)
        wide = (wide ^ sign) - sign
    return wide


def stored_pixels(ds: Dataset) -> np.ndarray:
    """The stored values of a 16-bit single-frame CT slice as int64 (Rows, Columns).

    Raises PixelDataError (or pydicom's own errors for encapsulated data) when the
    data cannot be decoded into exactly one frame."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    bits_stored = int(ds.get("BitsStored", 16) or 16)
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)))
    if "PixelData" not in ds:
        raise PixelDataError("no Pixel Data")
    if syntax.is_encapsulated:
        values = np.asarray(ds.pixel_array)
        if values.shape != (rows, columns):
            raise PixelDataError(f"decoded to shape {values.shape}, not {rows} x {columns}")
        return values.astype(np.int64)
    raw = ds.PixelData
    expected = rows * columns * 2
    if len(raw) not in (expected, expected + 1):
        raise PixelDataError(f"Pixel Data holds {len(raw)} bytes, not Rows x Columns x 2 = {expected}")
    order = "<" if syntax.is_little_endian or syntax.is_deflated else ">"
    values = np.frombuffer(raw, dtype=f"{order}{'i2' if signed else 'u2'}", count=rows * columns)
    return _mask(values, bits_stored, signed).reshape(rows, columns)


def decode_slice(path: Path) -> np.ndarray:
    """Read a slice whole and decode it; any failure is a PixelDataError with the reason."""
    try:
        ds = pydicom.dcmread(path)
        return stored_pixels(ds)
    except PixelDataError:
        raise
    except Exception as err:  # pydicom and its plugins raise many types
        lines = str(err).strip().splitlines()
        raise PixelDataError(lines[0][:160] if lines else type(err).__name__) from None


def plain_unsigned_range(
    path: Path, offset: int, rows: int, columns: int, bits_stored: int
) -> tuple[int, int]:
    """(min, max) stored value of a plain little-endian unsigned slice, read in place."""
    count = rows * columns
    values = np.fromfile(path, dtype="<u2", count=count, offset=offset)
    if values.size != count:
        raise PixelDataError(f"Pixel Data holds {values.size * 2} bytes, not {count * 2}")
    masked = _mask(values, bits_stored, signed=False)
    return int(masked.min()), int(masked.max())


def int16_offset(slope: float, intercept: float) -> int:
    """The shift that rewrites unsigned stored values as int16 with the same HU."""
    return round(intercept / slope)
