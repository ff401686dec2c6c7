"""The bundle's manifest: the contract between the workstation and the cluster jobs.

Rendering writes ``manifest.json``; the prepare job verifies its checksums, the
simulate job maps ``SLURM_ARRAY_TASK_ID`` to a beam with it, post-processing
reads the grid and beams from it, and the poller reads ``results/summary.json``.

Layout of a bundle (paths relative to its root)::

    manifest.json
    input/                   flat DICOM dir for MOQUI (CT, RT Ion Plan, RTSTRUCT)
    tps/                     TPS RT Dose files, kept apart from MOQUI's input
    delivery_logs/           machine logs under opaque names (log_0001.csv ...)
    beams/<number>/moqui_tps.in
    beams/<number>/output/   that beam's OutputDir (created by the engine)
    beams/<number>/exit_code engine exit code, written by simulate.sbatch
    beams/<number>/engine.out, engine.err
    jobs/prepare.sbatch jobs/simulate.sbatch jobs/post.sbatch jobs/submit.sh
    logs/                    Slurm output files
    results/                 RT Dose files and summary.json, written by the post job
    results/post.done        the post job's last write (its exit code): the completion marker
    .local/ct_sources.json   workstation only, never uploaded: the sha256 of each CT
                             slice's source file, so that the next render of the case
                             reuses the int16 slices whose source did not change
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from mqi.textsafe import json_safe

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
RESULTS_DIR = "results"
SUMMARY_NAME = "summary.json"
POST_DONE_NAME = "post.done"  # written last by post.sbatch, after summary.json and any clean-up
QA_CONFIG_NAME = "qa_config.json"  # the `qa:` config the post job compares with
EXIT_CODE_NAME = "exit_code"
LOCAL_DIR = ".local"  # what the workstation keeps in a bundle for itself; never uploaded
CT_SOURCES_NAME = f"{LOCAL_DIR}/ct_sources.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ManifestGrid(_Strict):
    rows: int
    columns: int
    slices: int
    spacing: tuple[float, float, float] = Field(description="(dx, dy, dz) in mm.")
    origin: tuple[float, float, float] = Field(description="Centre of the first voxel (x, y, z).")
    frame_of_reference_uid: str
    normalised_to_int16: bool = Field(description="CT rewritten from unsigned to signed int16.")


class ManifestBeam(_Strict):
    array_index: int = Field(description="SLURM_ARRAY_TASK_ID of this beam's simulation task.")
    number: int = Field(description="DICOM BeamNumber.")
    name: str = Field(
        "",
        description='The beam\'s name, for the workstation only: manifest.json always holds "" '
        "(the bundle is visible to every cluster user); the key stays for readers of format 1.",
    )

    dir: str = Field(description="beams/<number>")
    meterset: float

    @field_serializer("name")
    def _no_name(self, _name: str) -> str:
        return ""


class Manifest(_Strict):
    """Only opaque identities and numbers: the bundle is visible to every cluster user, so
    no plan label, beam name or file name from the case folder is written here."""

    format: int = MANIFEST_FORMAT
    case_uid: str
    plan_uid: str
    plan_label: str = Field(
        "", description="Always empty: no label leaves the workstation; kept for readers of format 1."
    )

    fractions: int
    family: Literal["upstream", "logbased"]
    scorer: str
    output_format: str
    dose_type: Literal["PHYSICAL", "EFFECTIVE"]
    grid: ManifestGrid
    beams: list[ManifestBeam]
    plan_file: str = Field(description="The RT Ion Plan inside input/.")
    tps_doses: list[str] = Field(default_factory=list, description="TPS RT Dose files under tps/.")
    files: dict[str, str] = Field(description="sha256 of every input file, by bundle-relative path.")

    @field_serializer("plan_label")
    def _no_label(self, _label: str) -> str:
        return ""

    def expected_output_bytes(self) -> int:
        """Size of one beam's raw dose volume: float64 on the CT grid."""
        return self.grid.rows * self.grid.columns * self.grid.slices * 8

    def beam(self, number: int) -> ManifestBeam:
        for beam in self.beams:
            if beam.number == number:
                return beam
        raise KeyError(f"beam {number} is not in the manifest of case {self.case_uid}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle_dir: Path) -> Manifest:
    return Manifest.model_validate_json((bundle_dir / MANIFEST_NAME).read_text(encoding="utf-8"))


def write_manifest(bundle_dir: Path, manifest: Manifest) -> None:
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True, allow_nan=False) + "\n"
    (bundle_dir / MANIFEST_NAME).write_text(text, encoding="utf-8")


SUMMARY_FORMAT = 1


class SummaryBeam(BaseModel):
    """One beam's line of ``results/summary.json``."""

    number: int
    status: Literal["completed", "failed"]
    reason: str | None = None
    exit_code: int | None = None
    engine_ms: float | None = None
    max_dose_gy: float | None = None
    mean_dose_gy: float | None = None
    file: str | None = Field(default=None, description="The beam's RT Dose under results/.")
    sha256: str | None = None


class Summary(BaseModel):
    """``results/summary.json``: what the post job found, written last by the post job and
    read by the poller before it downloads anything. Keys may be added, never renamed."""

    format: int = SUMMARY_FORMAT
    case_uid: str
    plan_status: Literal["completed", "failed"]
    plan_file: str | None = None
    dose_type: str | None = None
    tps_doses: list[str] = Field(default_factory=list)
    beams: list[SummaryBeam] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of each result file, by name.")
    qa: dict[str, Any] | None = Field(
        None,
        description="The QA verdict in short (verdict, first criterion and its pass rate); qa.json has all.",
    )

    def failed_beams(self) -> list[SummaryBeam]:
        return [beam for beam in self.beams if beam.status != "completed"]

    def failure_text(self) -> str:
        """Every failed beam's reason, for a physicist: ``beam 2: exit code 134; ...``."""
        parts = [f"beam {b.number}: {b.reason or 'failed'}" for b in self.failed_beams()]
        return "; ".join(parts) or "the plan sum was not written"


class SummaryError(ValueError):
    """summary.json cannot be read as a summary."""


def parse_summary(text: str) -> Summary:
    try:
        return Summary.model_validate_json(text)
    except ValueError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SummaryError(f"summary.json is unreadable ({first})") from None


def summary_json(summary: Summary) -> str:
    """Strict JSON: a value that is not a finite number is written as null."""
    return json.dumps(json_safe(summary.model_dump(mode="json")), indent=2, allow_nan=False) + "\n"


def qa_line(first_criterion: str | None, first_pass_rate: float | None, reasons: list[str]) -> str:
    """A QA verdict's one line (the reason of its event): the first criterion's pass rate,
    then the first two reasons."""
    parts = [] if first_pass_rate is None else [f"{first_criterion} {float(first_pass_rate):.1f}%"]
    return "; ".join(parts + [str(reason) for reason in reasons[:2]])
