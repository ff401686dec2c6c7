"""The checked case: what intake hands to rendering.

No patient name is kept here: only what the simulation and the RT Dose need.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    # allow_inf_nan=False: a NaN that slipped past a check fails loudly here, never in MOQUI
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Problem(_Frozen):
    """One thing wrong (an error) or worth knowing (a warning) about a case folder."""

    code: str = Field(description="Stable machine-readable code, e.g. CT_GAP.")
    message: str = Field(description="One line naming the file and what to do.")
    path: Path | None = None


class EnergyLayer(_Frozen):
    energy_mev: float
    spots: int
    meterset_weight: float


class Beam(_Frozen):
    """A treatment beam (setup beams are never in a Case)."""

    number: int = Field(description="DICOM BeamNumber: what MOQUI's BeamNumbers key takes.")
    name: str
    sequence_index: int = Field(description="0-based position in IonBeamSequence.")
    machine: str
    radiation_type: str
    gantry_angle: float
    couch_angle: float
    isocenter: tuple[float, float, float]
    range_shifters: int
    blocks: int
    layers: list[EnergyLayer]
    spots: int
    meterset: float = Field(description="BeamMeterset from the fraction group (MU).")


class Plan(_Frozen):
    label: str
    sop_instance_uid: str
    fractions: int
    frame_of_reference_uid: str | None
    path: Path


class CTGrid(_Frozen):
    rows: int
    columns: int
    slices: int
    spacing: tuple[float, float, float] = Field(description="(dx, dy, dz) in mm.")
    origin: tuple[float, float, float] = Field(description="ImagePositionPatient of the first slice.")
    pixel_representation: int = Field(description="0 unsigned, 1 signed.")
    bits_allocated: int
    rescale_slope: float
    rescale_intercept: float
    series_instance_uid: str
    frame_of_reference_uid: str
    files: list[Path] = Field(description="Slice files sorted by increasing z.")


class Structure(_Frozen):
    number: int
    name: str


class StructureSet(_Frozen):
    path: Path
    structures: list[Structure]


class TPSDose(_Frozen):
    path: Path
    summation_type: str
    dose_type: str
    beam_number: int | None = None


class Case(_Frozen):
    """A case folder that passed every check."""

    case_id: str = Field(description="For people: sanitised folder name + short plan hash.")
    case_uid: str = Field(description="Opaque; the only identity that leaves the workstation.")
    source_dir: Path
    plan: Plan
    beams: list[Beam]
    ct: CTGrid
    structure_set: StructureSet | None
    tps_doses: list[TPSDose]
    log_dir: Path | None = None
    log_files: list[Path] = Field(
        default_factory=list,
        description="The delivery-log files intake found, sorted; only these are bundled.",
    )
    warnings: list[Problem] = Field(default_factory=list)
