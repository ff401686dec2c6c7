"""Bundles built by hand for the engine side: input/ DICOM, manifest, beams/<n>/moqui_tps.in.

A bundle here is what rendering produces and what the cluster jobs see: the engine runs
with the bundle root as working directory (``ParentDir .``, ``DicomDir input``,
``OutputDir beams/<n>/output``) and :func:`run_engine` records ``exit_code``,
``engine.out`` and ``engine.err`` as simulate.sbatch does.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mqi.bundle import (
    EXIT_CODE_NAME,
    Manifest,
    ManifestBeam,
    ManifestGrid,
    sha256_file,
    write_manifest,
)
from mqi.moqui_params import format_parameter_line
from mqi.testing import standin
from mqi.testing.synthetic import build_case
from tests.helpers import APTG

needs_aptg = pytest.mark.skipif(
    not APTG.is_dir(), reason=f"the shared APTG case is not at {APTG} (../shared/data)"
)
needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None,
    reason="dciodvfy is not installed (Debian package dicom3tools)",
)

SMALL_CT = (24, 20, 12)  # rows, columns, slices: distinct so axis mix-ups show
SMALL_SPACING = (2.0, 2.5, 3.0)  # dx, dy, dz


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    def beam_dir(self, number: int) -> Path:
        return self.path / "beams" / str(number)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nz, ny, nx) of the engine output."""
        grid = self.manifest.grid
        return (grid.slices, grid.rows, grid.columns)


def synthetic_input(
    input_dir: Path,
    *,
    beams: int = 2,
    ct_shape: tuple[int, int, int] = SMALL_CT,
    spacing: tuple[float, float, float] = SMALL_SPACING,
    unsigned_ct: bool = False,
    **options: object,
) -> None:
    """A small synthetic case (CT, RTSTRUCT, RT Ion Plan) flat in ``input_dir``."""
    staging = input_dir.parent / "synthetic-case"
    case = build_case(
        staging,
        beams=beams,
        ct_shape=ct_shape,
        spacing=spacing,
        unsigned_ct=unsigned_ct,
        with_tps_dose=False,
        **options,  # type: ignore[arg-type]
    )
    input_dir.mkdir(parents=True, exist_ok=True)
    for path in [case.plan, case.rtstruct, *case.ct]:
        shutil.copy2(path, input_dir / path.name)
    shutil.rmtree(staging)


def aptg_input(input_dir: Path) -> None:
    """The shared APTG case with its unsigned CT rewritten as signed int16 (what MOQUI needs)."""
    input_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted((APTG / "ct").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelData = hu.astype("<i2").tobytes()
        ds.save_as(input_dir / path.name)
    for path in [APTG / "RP.ramped_2Gy_ver2_full.dcm", *APTG.glob("RS*.dcm")]:
        shutil.copy2(path, input_dir / path.name)


def _grid(input_dir: Path) -> ManifestGrid:
    slices = []
    for path in sorted(input_dir.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "CT":
            slices.append(ds)
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    first = slices[0]
    dz = float(slices[1].ImagePositionPatient[2]) - float(first.ImagePositionPatient[2])
    return ManifestGrid(
        rows=int(first.Rows),
        columns=int(first.Columns),
        slices=len(slices),
        spacing=(float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), dz),
        origin=tuple(float(v) for v in first.ImagePositionPatient),  # type: ignore[arg-type]
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        normalised_to_int16=False,
    )


def _plan(input_dir: Path) -> tuple[Path, pydicom.Dataset]:
    for path in sorted(input_dir.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "RTPLAN":
            return path, ds
    raise AssertionError(f"no RT plan in {input_dir}")


def parameter_text(number: int, parameters: dict[str, object]) -> str:
    """A moqui_tps.in as rendering writes it: config keys first, then the per-beam keys."""
    per_beam: dict[str, object] = {
        "GPUID": 0,
        "BeamNumbers": number,
        "ParentDir": ".",
        "DicomDir": "input",
        "OutputDir": f"beams/{number}/output",
        "OverwriteResults": True,
        "UseAbsolutePath": False,
        "RandomSeed": 1000 + number,
    }
    lines = [f"# MOQUI parameters for beam {number}"]
    lines += [format_parameter_line(key, value) for key, value in parameters.items()]
    lines += [format_parameter_line(key, value) for key, value in per_beam.items()]
    return "\n".join(lines) + "\n"


def build_bundle(
    root: Path,
    *,
    source: str = "synthetic",
    output_format: str = "raw",
    scorer: str = "Dose",
    dose_type: str = "EFFECTIVE",
    parameters: dict[str, object] | None = None,
    **case_options: object,
) -> Bundle:
    """A rendered bundle at ``root``: input/, manifest.json, beams/<n>/moqui_tps.in."""
    input_dir = root / "input"
    if source == "aptg":
        aptg_input(input_dir)
    else:
        synthetic_input(input_dir, **case_options)  # type: ignore[arg-type]
    plan_path, plan = _plan(input_dir)
    group = plan.FractionGroupSequence[0]
    meterset = {
        int(ref.ReferencedBeamNumber): float(ref.BeamMeterset) for ref in group.ReferencedBeamSequence
    }
    beams = [
        ManifestBeam(
            array_index=index,
            number=int(beam.BeamNumber),
            name=str(beam.BeamName),
            dir=f"beams/{int(beam.BeamNumber)}",
            meterset=meterset.get(int(beam.BeamNumber), 0.0),
        )
        for index, beam in enumerate(
            item for item in plan.IonBeamSequence if item.TreatmentDeliveryType == "TREATMENT"
        )
    ]
    params = {"ParticlesPerHistory": 1, "Scorer": scorer, "OutputFormat": output_format}
    params.update(parameters or {})
    for beam in beams:
        beam_dir = root / beam.dir
        beam_dir.mkdir(parents=True)
        (beam_dir / "moqui_tps.in").write_text(parameter_text(beam.number, params), encoding="utf-8")
    manifest = Manifest(
        case_uid="0123456789abcdef",
        plan_uid=str(plan.SOPInstanceUID),
        fractions=int(group.NumberOfFractionsPlanned),
        family="upstream",
        scorer=scorer,
        output_format=output_format,
        dose_type=dose_type,  # type: ignore[arg-type]
        grid=_grid(input_dir),
        beams=beams,
        plan_file=f"input/{plan_path.name}",
        tps_doses=[],
        files={f"input/{p.name}": sha256_file(p) for p in sorted(input_dir.iterdir())},
    )
    write_manifest(root, manifest)
    return Bundle(root, manifest)


def standin_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mqi.testing.standin", *args]


def run_standin(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The stand-in as a real process in ``cwd``."""
    return subprocess.run(standin_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def run_standin_here(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The stand-in's whole run in this process (the console script's code path without the
    interpreter start-up), for behaviour that does not depend on the process itself."""
    out, err = io.StringIO(), io.StringIO()
    code = standin.execute(list(args), cwd, out, err)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def run_engine(
    bundle: Bundle, number: int, *options: str, process: bool = True
) -> subprocess.CompletedProcess[str]:
    """One beam's simulation as simulate.sbatch runs it: engine.out/err and exit_code."""
    beam_dir = bundle.beam_dir(number)
    shutil.rmtree(beam_dir / "output", ignore_errors=True)
    (beam_dir / EXIT_CODE_NAME).unlink(missing_ok=True)
    runner = run_standin if process else run_standin_here
    done = runner(bundle.path, *options, f"beams/{number}/moqui_tps.in")
    (beam_dir / "engine.out").write_text(done.stdout, encoding="utf-8")
    (beam_dir / "engine.err").write_text(done.stderr, encoding="utf-8")
    (beam_dir / EXIT_CODE_NAME).write_text(f"{done.returncode}\n", encoding="utf-8")
    return done


def run_all_beams(bundle: Bundle, *options: str, process: bool = True) -> None:
    for beam in bundle.manifest.beams:
        run_engine(bundle, beam.number, *options, process=process)


def read_output(bundle: Bundle, number: int) -> np.ndarray:
    """A beam's raw engine output as (nz, ny, nx)."""
    scorer = bundle.manifest.scorer
    (path,) = sorted((bundle.beam_dir(number) / "output").glob(f"*_{scorer}.raw"))
    return np.fromfile(path, dtype="<f8").reshape(bundle.shape)


def edit_plan(bundle: Bundle, edit: Callable[[pydicom.Dataset], None]) -> None:
    """Change the RT Ion Plan in the bundle's input/ in place."""
    path = bundle.path / bundle.manifest.plan_file
    plan = pydicom.dcmread(path)
    edit(plan)
    plan.save_as(path)


def set_parameter_lines(bundle: Bundle, number: int, text: str) -> Path:
    """Replace a beam's moqui_tps.in with ``text``."""
    path = bundle.beam_dir(number) / "moqui_tps.in"
    path.write_text(text, encoding="utf-8")
    return path


def replace_parameter(bundle: Bundle, number: int, key: str, value: str | None) -> Path:
    """Set (or, with None, drop) one key of a beam's moqui_tps.in."""
    path = bundle.beam_dir(number) / "moqui_tps.in"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.split()[:1] != [key]]
    if value is not None:
        lines.append(f"{key} {value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- dciodvfy --------------------------------------------------------------------------
_BITS_32 = {
    b"\x28\x00\x00\x01US\x02\x00\x20\x00": b"\x28\x00\x00\x01US\x02\x00\x10\x00",  # BitsAllocated
    b"\x28\x00\x01\x01US\x02\x00\x20\x00": b"\x28\x00\x01\x01US\x02\x00\x10\x00",  # BitsStored
    b"\x28\x00\x02\x01US\x02\x00\x1f\x00": b"\x28\x00\x02\x01US\x02\x00\x0f\x00",  # HighBit
}
DCIODVFY_32BIT_ASSERTION = "bitsallocated <= bytesinword"


def sixteen_bit_twin(path: Path, twin: Path) -> Path:
    """The same file byte for byte, except a 16-bit Image Pixel module (Bits Allocated/Stored,
    High Bit and the pixels' high halves): dicom3tools 1.00~20220618 aborts on any 32-bit
    Pixel Data, so the rest of an RT Dose is verified on this twin."""
    data = path.read_bytes()
    for old, new in _BITS_32.items():
        assert data.count(old) == 1, f"{path.name}: expected one {old!r}"
        data = data.replace(old, new)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    pixel_bytes = int(ds.Rows) * int(ds.Columns) * int(ds.NumberOfFrames) * 4
    header_at = len(data) - pixel_bytes - 12
    header = data[header_at : header_at + 12]
    assert header == b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little"), header
    pixels = np.frombuffer(data, dtype="<u4", offset=header_at + 12) >> 16
    twin_header = b"\xe0\x7f\x10\x00OW\x00\x00" + (pixel_bytes // 2).to_bytes(4, "little")
    twin.write_bytes(data[:header_at] + twin_header + pixels.astype("<u2").tobytes())
    return twin


def dciodvfy_report(path: Path, scratch: Path) -> str:
    """dciodvfy's full output for an RT Dose (via its 16-bit twin when dciodvfy cannot read
    32-bit pixels)."""
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    if DCIODVFY_32BIT_ASSERTION in done.stderr:
        twin = sixteen_bit_twin(path, scratch / f"{path.stem}.16bit.dcm")
        done = subprocess.run(["dciodvfy", str(twin)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def dciodvfy_errors(path: Path, scratch: Path) -> list[str]:
    return [line for line in dciodvfy_report(path, scratch).splitlines() if "Error" in line]
