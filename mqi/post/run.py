"""Post-processing of one bundle: MOQUI output -> RT Dose per beam, plan sum, summary.json.

Two streaming passes over the engine output, a few frames at a time, keep the memory
bounded whatever the grid: the first finds each beam's maximum, mean and bad values (NaN,
infinite, negative) and the maximum of the plan sum; the second writes every RT Dose at
once, each scaled by its own maximum. ``results/summary.json`` is written last, atomically.
A failed beam is data, not an error: only a broken post-processing raises.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mqi.bundle import RESULTS_DIR, SUMMARY_NAME, Manifest, Summary, SummaryBeam, read_manifest, summary_json
from mqi.post.outputs import BeamCheck, VolumeFile, inspect_beam
from mqi.post.rtdose import (
    RT_ION_PLAN_STORAGE,
    BackgroundSink,
    DoseGrid,
    DoseIdentity,
    RTDoseWriter,
    derived_uid,
    dose_dataset,
    dose_scaling,
)

PLAN_FILE = "RD.plan.dcm"
CHUNK_BYTES = 8 * 2**20
UID_ROOT = "mqi-post"


def beam_file_name(number: int) -> str:
    return f"RD.beam{number}.dcm"


@dataclass
class BeamResult:
    """One beam's line of the summary: numbers and reasons only. No beam name: the summary
    and the job log live on the cluster, where every user can read them."""

    number: int
    status: str
    reason: str | None
    exit_code: int | None
    engine_ms: float | None
    max_dose_gy: float | None = None
    mean_dose_gy: float | None = None
    file: str | None = None
    sha256: str | None = None

    def fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason
        self.max_dose_gy = self.mean_dose_gy = None


@dataclass
class VolumeStats:
    """Running statistics of one volume over the first pass. The total is summed frame by
    frame and then exactly (fsum), so it does not depend on how frames are chunked."""

    maximum: float = -math.inf
    minimum: float = math.inf
    frame_sums: list[float] = field(default_factory=list)

    def add(self, values: np.ndarray, frames: int) -> None:
        self.maximum = max(self.maximum, float(values.max()))
        self.minimum = min(self.minimum, float(values.min()))
        self.frame_sums.extend(values.reshape(frames, -1).sum(axis=1).tolist())

    @property
    def total(self) -> float:
        try:
            return math.fsum(self.frame_sums)
        except ValueError:  # inf + -inf
            return math.nan

    def problem(self) -> str | None:
        """Why these values are not a dose, or None."""
        values = (self.maximum, self.minimum, self.total)
        if any(math.isnan(value) for value in values):
            return "output contains NaN"
        if any(math.isinf(value) for value in values):
            return "output contains infinite values"
        if self.minimum < 0:
            return f"output contains negative values (min {self.minimum:.3g})"
        return None

    def fingerprint(self) -> str:
        return f"{self.maximum!r}/{self.total!r}"


# --- streaming the volumes ------------------------------------------------------------
class FrameReader:
    """Reads consecutive frames of float64 values from one engine output file."""

    def __init__(self, volume: VolumeFile, frame_voxels: int, chunk_frames: int) -> None:
        self._handle: BinaryIO = volume.path.open("rb")
        self._handle.seek(volume.offset)
        self._frame_voxels = frame_voxels
        self._buffer = np.empty(chunk_frames * frame_voxels, dtype="<f8")

    def read(self, frames: int) -> np.ndarray:
        """The next ``frames`` frames as a flat view of an internal buffer."""
        count = frames * self._frame_voxels
        view = self._buffer[:count]
        got = self._handle.readinto(memoryview(view).cast("B"))
        if got != view.nbytes:
            raise OSError(f"{self._handle.name}: file ended early (read {got} of {view.nbytes} bytes)")
        return view

    def close(self) -> None:
        self._handle.close()


def chunk_frames(frame_voxels: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(1, chunk_bytes // (frame_voxels * 8))


def frame_chunks(frames: int, per_chunk: int) -> Iterator[int]:
    """Sizes of consecutive chunks covering ``frames`` frames."""
    start = 0
    while start < frames:
        size = min(per_chunk, frames - start)
        yield size
        start += size


def _open_readers(
    stack: ExitStack, volumes: Sequence[VolumeFile], grid: DoseGrid, per_chunk: int
) -> list[FrameReader]:
    readers = []
    for volume in volumes:
        reader = FrameReader(volume, grid.frame_voxels, per_chunk)
        stack.callback(reader.close)
        readers.append(reader)
    return readers


def scan_volumes(
    volumes: Sequence[VolumeFile], grid: DoseGrid, per_chunk: int
) -> tuple[list[VolumeStats], float]:
    """First pass: statistics of every volume and the maximum of their sum."""
    stats = [VolumeStats() for _ in volumes]
    plan_max = -math.inf
    total = np.empty(per_chunk * grid.frame_voxels)
    with ExitStack() as stack:
        readers = _open_readers(stack, volumes, grid, per_chunk)
        for frames in frame_chunks(grid.frames, per_chunk):
            plan = total[: frames * grid.frame_voxels]
            for index, reader in enumerate(readers):
                values = reader.read(frames)
                stats[index].add(values, frames)
                if index == 0:
                    plan[:] = values
                else:
                    plan += values
            if readers:
                plan_max = max(plan_max, float(plan.max()))
    return stats, plan_max


def write_doses(
    volumes: Sequence[VolumeFile],
    writers: Sequence[RTDoseWriter],
    plan_writer: RTDoseWriter | None,
    grid: DoseGrid,
    per_chunk: int,
) -> None:
    """Second pass: every beam's frames into its writer, their sum into the plan's."""
    total = np.empty(per_chunk * grid.frame_voxels)
    scratch = np.empty_like(total)
    with ExitStack() as stack:
        readers = _open_readers(stack, volumes, grid, per_chunk)
        for frames in frame_chunks(grid.frames, per_chunk):
            count = frames * grid.frame_voxels
            plan = total[:count]
            for index, (reader, writer) in enumerate(zip(readers, writers, strict=True)):
                values = reader.read(frames)
                writer.write_frames(values, scratch[:count])
                if plan_writer is not None:
                    if index == 0:
                        plan[:] = values
                    else:
                        plan += values
            if plan_writer is not None:
                plan_writer.write_frames(plan, scratch[:count])


# --- the case's DICOM context --------------------------------------------------------
@dataclass(frozen=True)
class CaseContext:
    patient_source: Dataset | None  # a CT slice header: patient and study modules
    plan_class_uid: str
    fraction_groups: dict[int, int]  # beam number -> fraction group number


def _first_ct_header(input_dir: Path) -> Dataset | None:
    for path in sorted(input_dir.iterdir()) if input_dir.is_dir() else []:
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
            continue
        if ds.get("Modality") == "CT":
            return ds
    return None


def _plan_path(bundle_dir: Path, plan_file: str) -> Path:
    direct = bundle_dir / plan_file
    return direct if direct.is_file() else bundle_dir / "input" / plan_file


def _fraction_groups(plan: Dataset) -> dict[int, int]:
    groups: dict[int, int] = {}
    for group in plan.get("FractionGroupSequence", []) or []:
        number = int(group.get("FractionGroupNumber", 1) or 1)
        for ref in group.get("ReferencedBeamSequence", []) or []:
            groups.setdefault(int(ref.ReferencedBeamNumber), number)
    return groups


def read_context(bundle_dir: Path, manifest: Manifest) -> CaseContext:
    try:
        plan = pydicom.dcmread(
            _plan_path(bundle_dir, manifest.plan_file),
            specific_tags=["SOPClassUID", "FractionGroupSequence"],
        )
        plan_class = str(plan.get("SOPClassUID", RT_ION_PLAN_STORAGE))
        groups = _fraction_groups(plan)
    except (InvalidDicomError, OSError):
        plan_class, groups = RT_ION_PLAN_STORAGE, {}
    return CaseContext(_first_ct_header(bundle_dir / "input"), plan_class, groups)


def dose_grid(manifest: Manifest) -> DoseGrid:
    grid = manifest.grid
    return DoseGrid(
        columns=grid.columns,
        rows=grid.rows,
        frames=grid.slices,
        spacing=grid.spacing,
        origin=grid.origin,
        frame_of_reference_uid=grid.frame_of_reference_uid,
    )


# --- one bundle ---------------------------------------------------------------------------
def _check_beams(bundle_dir: Path, manifest: Manifest, grid: DoseGrid) -> list[tuple[BeamResult, BeamCheck]]:
    shape_xyz = (grid.columns, grid.rows, grid.frames)
    checked = []
    for beam in manifest.beams:
        check = inspect_beam(
            bundle_dir / beam.dir,
            manifest.scorer,
            manifest.output_format,
            shape_xyz,
            manifest.expected_output_bytes(),
        )
        result = BeamResult(beam.number, "completed", None, check.exit_code, check.engine_ms)
        if check.reason:
            result.fail(check.reason)
        elif manifest.scorer.lower() != "dose":
            result.fail(f"scorer {manifest.scorer} is not a dose; an RT Dose needs Scorer Dose")
        checked.append((result, check))
    return checked


def _remove_stale(results_dir: Path, keep: set[str]) -> None:
    """Remove RT Doses of an earlier run that this run does not rewrite, and leftovers."""
    for path in results_dir.iterdir():
        stale_dose = path.name.startswith("RD.") and path.name.endswith(".dcm")
        if (stale_dose and path.name not in keep) or path.name.endswith(".partial"):
            path.unlink()


def _open_writer(
    stack: ExitStack,
    path: Path,
    case: tuple[Manifest, CaseContext, DoseGrid],
    identity: DoseIdentity,
    maximum: float,
    sink: BackgroundSink,
) -> RTDoseWriter:
    manifest, context, grid = case
    scaling = dose_scaling(maximum)
    ds = dose_dataset(
        grid,
        identity,
        scaling=scaling,
        dose_type=manifest.dose_type,
        plan_uid=manifest.plan_uid,
        plan_class_uid=context.plan_class_uid,
        patient_source=context.patient_source,
        description=f"MOQUI {manifest.scorer}",
    )
    return stack.enter_context(RTDoseWriter(path, ds, grid, scaling, sink))


def _identities(
    manifest: Manifest, context: CaseContext, good: list[tuple[BeamResult, VolumeFile, VolumeStats]]
) -> tuple[list[DoseIdentity], DoseIdentity]:
    """UIDs derived from the case and the content: the same output gives the same UIDs, a
    re-simulated beam new ones."""
    content = [stats.fingerprint() for _, _, stats in good]
    series = derived_uid(UID_ROOT, manifest.case_uid, manifest.plan_uid, "series", *content)
    beams = [
        DoseIdentity(
            sop_instance_uid=derived_uid(UID_ROOT, manifest.case_uid, "beam", result.number, *content),
            series_instance_uid=series,
            instance_number=result.number,
            summation="BEAM",
            beam_number=result.number,
            fraction_group_number=context.fraction_groups.get(result.number, 1),
        )
        for result, _, _ in good
    ]
    plan = DoseIdentity(
        sop_instance_uid=derived_uid(UID_ROOT, manifest.case_uid, "plan", *content),
        series_instance_uid=series,
        instance_number=max((result.number for result, _, _ in good), default=0) + 1,
        summation="PLAN",
    )
    return beams, plan


def _write_results(
    results_dir: Path,
    case: tuple[Manifest, CaseContext, DoseGrid],
    good: list[tuple[BeamResult, VolumeFile, VolumeStats]],
    plan_max: float | None,
    per_chunk: int,
) -> str | None:
    """Write the RT Doses of the good beams, and the plan sum when ``plan_max`` is given;
    fills in each result's file and sha256 and returns the plan file's sha256."""
    manifest, context, grid = case
    beam_ids, plan_id = _identities(manifest, context, good)
    with ExitStack() as stack:
        sink = stack.enter_context(BackgroundSink())
        writers = [
            _open_writer(
                stack, results_dir / beam_file_name(result.number), case, identity, stats.maximum, sink
            )
            for (result, _, stats), identity in zip(good, beam_ids, strict=True)
        ]
        plan_writer = None
        if plan_max is not None:
            plan_writer = _open_writer(stack, results_dir / PLAN_FILE, case, plan_id, plan_max, sink)
        write_doses([volume for _, volume, _ in good], writers, plan_writer, grid, per_chunk)
        for (result, _, _), writer in zip(good, writers, strict=True):
            result.file, result.sha256 = writer.path.name, writer.close()
        return plan_writer.close() if plan_writer is not None else None


def write_summary(results_dir: Path, summary: Summary) -> Path:
    """``summary.json`` via a temporary file and a rename."""
    path = results_dir / SUMMARY_NAME
    partial = results_dir / (SUMMARY_NAME + ".partial")
    partial.write_text(summary_json(summary), encoding="utf-8")
    os.replace(partial, path)
    return path


def build_summary(manifest: Manifest, results: Sequence[BeamResult], plan_sha256: str | None) -> Summary:
    files = {result.file: result.sha256 for result in results if result.file and result.sha256}
    if plan_sha256:
        files[PLAN_FILE] = plan_sha256
    return Summary(
        case_uid=manifest.case_uid,
        plan_status="completed" if plan_sha256 else "failed",
        plan_file=PLAN_FILE if plan_sha256 else None,
        dose_type=manifest.dose_type,
        tps_doses=list(manifest.tps_doses),
        beams=[SummaryBeam(**asdict(result)) for result in results],
        files=files,
    )


def log_line(result: BeamResult) -> str:
    """One line per beam for the job log: numbers and reasons, never patient data."""
    head = f"beam {result.number}: {result.status}"
    if result.status != "completed":
        return f"{head}: {result.reason}"
    engine = f", engine {result.engine_ms:.0f} ms" if result.engine_ms is not None else ""
    return (
        f"{head}, max {result.max_dose_gy:.4g} Gy, mean {result.mean_dose_gy:.4g} Gy{engine} -> {result.file}"
    )


def _judge(
    usable: list[tuple[BeamResult, VolumeFile]], stats: list[VolumeStats], grid: DoseGrid
) -> list[tuple[BeamResult, VolumeFile, VolumeStats]]:
    """Fail the beams whose values are not a dose; the others get their max and mean."""
    good = []
    for (result, volume), beam_stats in zip(usable, stats, strict=True):
        problem = beam_stats.problem()
        if problem:
            result.fail(problem)
            continue
        result.max_dose_gy = beam_stats.maximum
        result.mean_dose_gy = beam_stats.total / grid.voxels
        good.append((result, volume, beam_stats))
    return good


def _write_log(log: TextIO, results: Sequence[BeamResult], plan_sha256: str | None) -> None:
    for result in results:
        log.write(log_line(result) + "\n")
    if plan_sha256:
        log.write(f"plan: completed -> {PLAN_FILE}\n")
    else:
        log.write("plan: failed (not every beam completed)\n")
    log.flush()


def postprocess_bundle(
    bundle_dir: Path, log: TextIO | None = None, *, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, Any]:
    """Turn a bundle's engine output into RT Doses and ``results/summary.json``; returns the
    summary. Raises only when post-processing itself cannot proceed.

    ``log`` gets one line per beam and one for the plan (no patient data); ``chunk_bytes``
    bounds the float64 data read per beam at a time (at least one frame)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    grid = dose_grid(manifest)
    results_dir = bundle_dir / RESULTS_DIR
    results_dir.mkdir(exist_ok=True)
    checked = _check_beams(bundle_dir, manifest, grid)
    results = [result for result, _ in checked]
    usable = [
        (result, check.volume)
        for result, check in checked
        if result.status == "completed" and check.volume is not None
    ]
    per_chunk = chunk_frames(grid.frame_voxels, chunk_bytes)
    stats, plan_max = scan_volumes([volume for _, volume in usable], grid, per_chunk)
    good = _judge(usable, stats, grid)
    all_good = bool(results) and len(good) == len(results)
    keep = {beam_file_name(result.number) for result, _, _ in good} | ({PLAN_FILE} if all_good else set())
    _remove_stale(results_dir, keep)
    case = (manifest, read_context(bundle_dir, manifest), grid)
    plan_sha = _write_results(results_dir, case, good, plan_max if all_good else None, per_chunk)
    summary = build_summary(manifest, results, plan_sha)
    if log is not None:
        _write_log(log, results, plan_sha)
    from mqi.qa.case import qa_status, write_bundle_qa  # numba/matplotlib only when needed

    summary.files.update(write_bundle_qa(bundle_dir, manifest, summary.model_dump(mode="json"), log))
    if (results_dir / "qa.json").is_file():
        summary.qa = qa_status(results_dir / "qa.json")
    write_summary(results_dir, summary)
    return summary.model_dump(mode="json")
