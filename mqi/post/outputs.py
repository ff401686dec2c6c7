"""What one simulation task left behind: exit code, engine logs and the dose volume.

Parsing is pure (text in, values out); :func:`inspect_beam` does the file reading. A
beam that cannot be used gets a short reason a person understands at a glance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mqi.bundle import EXIT_CODE_NAME

ENGINE_OUT = "engine.out"
ENGINE_ERR = "engine.err"
OUTPUT_DIR = "output"
TAIL_BYTES = 64 * 1024
MAX_REASON = 160

_TIME_TAKEN = re.compile(r"Time taken by MC engine:\s*([-+0-9.eE]+)\s*milli-?seconds")
_WHAT = re.compile(r"^\s*what\(\):\s*(.*\S)\s*$")
_CANNOT_WRITE = re.compile(r"^Cannot write\s*:")

SIGNAL_NAMES = {
    134: "aborted",
    135: "bus error",
    137: "killed (out of memory or cancelled)",
    139: "segmentation fault",
    143: "terminated",
}


@dataclass(frozen=True)
class VolumeFile:
    """Where the float64 dose values are: a file, the byte offset of the first value."""

    path: Path
    offset: int = 0


@dataclass(frozen=True)
class BeamCheck:
    """Everything known about a beam's run before its dose values are read."""

    exit_code: int | None
    engine_ms: float | None
    volume: VolumeFile | None
    reason: str | None  # why the beam failed, or None


# --- pure parsing --------------------------------------------------------------------
def parse_exit_code(text: str) -> int | None:
    """The integer in an exit_code file, or None when it holds none."""
    try:
        return int(text.strip())
    except ValueError:
        return None


def engine_ms(stdout_tail: str) -> float | None:
    """Run time from the last ``Time taken by MC engine: <ms> milli-seconds`` line."""
    found = _TIME_TAKEN.findall(stdout_tail)
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:
        return None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def failure_line(stderr_tail: str) -> str | None:
    """The line that says why the engine died: ``what():`` text, a CUDA error, or the last
    line of stderr."""
    lines = [line for line in stderr_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _WHAT.match(line)
        if match:
            return _short(match.group(1))
    for line in reversed(lines):
        if "CUDA error" in line:
            return _short(line.strip())
    return _short(lines[-1]) if lines else None


def exit_reason(code: int, stderr_tail: str) -> str:
    """``engine exit 134: Invalid beam number.`` and the like."""
    line = failure_line(stderr_tail)
    if line:
        return f"engine exit {code}: {line}"
    name = SIGNAL_NAMES.get(code)
    return f"engine exit {code} ({name})" if name else f"engine exit {code}"


def cannot_write_line(stdout_tail: str) -> str | None:
    for line in reversed(stdout_tail.splitlines()):
        if _CANNOT_WRITE.match(line.strip()):
            return _short(line.strip())
    return None


def parse_mhd_header(text: str) -> dict[str, str]:
    """MetaImage header fields by lowercase key; lenient: lines without ``=`` are skipped."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        if key.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def check_mhd_fields(fields: dict[str, str], shape_xyz: tuple[int, int, int]) -> str | None:
    """Why an mhd/mha header does not describe float64 values on the CT grid, or None."""
    dims = fields.get("dimsize", "").split()
    expected = " ".join(str(n) for n in shape_xyz)
    if " ".join(dims) != expected:
        got = "x".join(dims) or "missing"
        return f"output grid {got} does not match the CT grid {expected.replace(' ', 'x')}"
    element = fields.get("elementtype", "")
    if element != "MET_DOUBLE":
        return f"output element type {element or 'missing'}, expected MET_DOUBLE"
    if fields.get("binarydatabyteordermsb", "false").lower() == "true":
        return "output is big-endian, expected little-endian"
    if fields.get("compresseddata", "false").lower() == "true":
        return "output is compressed"
    return None


# --- files ---------------------------------------------------------------------------
def read_tail(path: Path, size: int = TAIL_BYTES) -> str | None:
    """The last ``size`` bytes of a text file, or None when it does not exist."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            end = handle.tell()
            handle.seek(max(0, end - size))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def _volume_from_mhd(header: Path, shape_xyz: tuple[int, int, int]) -> VolumeFile | str:
    try:
        raw = header.read_bytes()
    except OSError as err:
        return f"cannot read {header.name}: {err.strerror}"
    if header.suffix == ".mha":
        marker = raw.find(b"ElementDataFile")
        end = raw.find(b"\n", marker) if marker >= 0 else -1
        if end < 0:
            return "output header has no ElementDataFile"
        text = raw[: end + 1].decode("ascii", errors="replace")
    else:
        text = raw.decode("ascii", errors="replace")
    fields = parse_mhd_header(text)
    problem = check_mhd_fields(fields, shape_xyz)
    if problem:
        return problem
    data = fields.get("elementdatafile", "")
    if header.suffix == ".mha":
        if data != "LOCAL":
            return f"output header names data file {data!r}, expected LOCAL"
        return VolumeFile(header, offset=end + 1)
    if not data or data == "LOCAL" or Path(data).name != data:
        return f"output header names data file {data!r}, expected a file beside it"
    return VolumeFile(header.parent / data)


def find_volume(output_dir: Path, scorer: str, fmt: str, shape_xyz: tuple[int, int, int]) -> VolumeFile | str:
    """The output of a beam by glob ``*_<Scorer>.<ext>`` in its own OutputDir, or a reason."""
    ext = fmt if fmt in ("mhd", "mha") else "raw"
    if fmt.lower() == "npz":
        return "output format npz is not supported by post-processing"
    matches = sorted(output_dir.glob(f"*_{scorer}.{ext}")) if output_dir.is_dir() else []
    if not matches:
        return "no output file"
    if len(matches) > 1:
        names = ", ".join(path.name for path in matches)
        return _short(f"{len(matches)} output files match *_{scorer}.{ext}: {names}")
    if ext == "raw":
        return VolumeFile(matches[0])
    return _volume_from_mhd(matches[0], shape_xyz)


def check_size(volume: VolumeFile, expected_bytes: int) -> str | None:
    try:
        size = volume.path.stat().st_size - volume.offset
    except OSError:
        return f"output data file {volume.path.name} is missing"
    if size != expected_bytes:
        return f"output has {size} bytes, expected {expected_bytes}"
    return None


def inspect_beam(
    beam_dir: Path, scorer: str, fmt: str, shape_xyz: tuple[int, int, int], expected_bytes: int
) -> BeamCheck:
    """Exit code, run time and output file of one beam, or why it failed."""
    code_text = read_tail(beam_dir / EXIT_CODE_NAME, 256)
    stdout_tail = read_tail(beam_dir / ENGINE_OUT) or ""
    run_ms = engine_ms(stdout_tail)
    if code_text is None:
        reason = "no exit code: the simulation task never ran or did not finish"
        return BeamCheck(None, run_ms, None, reason)
    code = parse_exit_code(code_text)
    if code is None:
        return BeamCheck(None, run_ms, None, _short(f"unreadable exit code {code_text.strip()!r}"))
    if code != 0:
        reason = exit_reason(code, read_tail(beam_dir / ENGINE_ERR) or "")
        return BeamCheck(code, run_ms, None, reason)
    found = find_volume(beam_dir / OUTPUT_DIR, scorer, fmt, shape_xyz)
    if isinstance(found, str):
        said = cannot_write_line(stdout_tail) if found == "no output file" else None
        return BeamCheck(code, run_ms, None, f"{found} (engine: {said})" if said else found)
    problem = check_size(found, expected_bytes)
    return BeamCheck(code, run_ms, None if problem else found, problem)
