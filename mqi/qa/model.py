"""qa.json: the versioned result of one comparison run (schema ``mqi.qa/1``).

Keys may be added, never renamed. Doses are in Gy, volumes in cm^3, rates in percent.
The arrays behind the figures (gamma map, grids) ride along in private attributes for
the report and are never serialised.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

SCHEMA = "mqi.qa/1"
Verdict = Literal["pass", "review", "fail", "not-compared", "error"]
VERDICT_ORDER = {"pass": 0, "review": 1, "fail": 2, "not-compared": 3, "error": 4}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GammaFigures(_Model):
    criterion: str = Field(description="dose%/distance mm/cutoff% [local]")
    dose_percent: float
    distance_mm: float
    cutoff_percent: float
    local: bool
    required_pass_rate: float
    pass_rate: float = Field(description="% of reference voxels above the cutoff with gamma <= 1")
    passed: bool
    mean: float | None = None
    p95: float | None = None
    maximum: float | None = None
    evaluated_voxels: int
    passed_voxels: int
    uncovered_voxels: int = Field(description="Reference voxels with no evaluated dose within reach (fail)")
    coverage_percent: float | None = None
    normalisation_gy: float
    seconds: float


class DoseDifference(_Model):
    """Evaluated minus reference on the reference grid, in the high-dose region."""

    reference_max_gy: float
    evaluated_max_gy: float
    high_dose_threshold_gy: float
    voxels: int
    mean_gy: float | None = None
    mean_percent: float | None = Field(None, description="% of the reference maximum")
    std_percent: float | None = None
    p5_percent: float | None = None
    p95_percent: float | None = None
    max_abs_percent: float | None = None


class Profile(_Model):
    axis: Literal["x", "y", "z"]
    through_mm: tuple[float, float, float]
    position_mm: list[float]
    reference_gy: list[float | None]
    evaluated_gy: list[float | None]


class DVHFigures(_Model):
    volume_cc: float
    dmean: float
    dmax: float
    dmin: float
    d98: float
    d95: float
    d50: float
    d2: float
    d1cc: float | None = None
    v95: float | None = None
    curve_dose_gy: list[float] = Field(default_factory=list)
    curve_volume_percent: list[float] = Field(default_factory=list)


class StructureComparison(_Model):
    number: int
    name: str
    kind: str
    target: bool
    judged: bool = Field(description="False for markers, supports and structures below qa.dvh.min_volume_cc")
    reference: DVHFigures | None = None
    evaluated: DVHFigures | None = None
    difference: dict[str, float | None] = Field(
        default_factory=dict, description="evaluated minus reference per metric (Gy; v95 in points)"
    )
    out_of_tolerance: list[str] = Field(default_factory=list)


class Comparison(_Model):
    """One dose pair: a beam, the plan, or two files given to `mqi compare`."""

    label: str = Field(description='"plan", "beam <number>" or "files"')
    beam_number: int | None = None
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    reference_role: Literal["tps", "mc", "a", "b"] = "tps"
    reference_file: str | None = None
    evaluated_file: str | None = None
    evaluated_factor: float = Field(1.0, description="Applied to the MC dose before comparing (RBE)")
    overlap_percent: float | None = Field(None, description="Share of the reference box the other covers")
    gamma: list[GammaFigures] = Field(default_factory=list)
    dose_difference: DoseDifference | None = None
    profiles: list[Profile] = Field(default_factory=list)
    structures: list[StructureComparison] = Field(default_factory=list)
    _arrays: Any = PrivateAttr(default=None)

    @property
    def first_pass_rate(self) -> float | None:
        return self.gamma[0].pass_rate if self.gamma else None


class CaseQA(_Model):
    """Everything the post job (or `mqi report`) found for one case."""

    schema_: str = Field(SCHEMA, alias="schema")
    created: str = Field(description="UTC, ...Z")
    case_uid: str = ""
    plan_label: str = ""
    patient_id: str = ""
    plan_uid: str = ""
    engine: dict[str, Any] = Field(default_factory=dict, description="Engine family, command and parameters")
    mc_dose_type: str = ""
    tps_dose_type: str = ""
    rbe: float
    prescription_gy: float | None = None
    prescription_source: str = ""
    criteria: list[str] = Field(default_factory=list)
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    first_criterion: str | None = None
    first_pass_rate: float | None = Field(None, description="Plan comparison, first criterion")
    comparisons: list[Comparison] = Field(default_factory=list)
    seconds: float = 0.0
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True) + "\n"


COMPARE_SCHEMA = "mqi.compare/1"


def comparison_document(comparison: Comparison) -> dict[str, Any]:
    """``mqi compare --json``: the comparison with its schema key."""
    return {"schema": COMPARE_SCHEMA, **comparison.model_dump(mode="json")}


def worst(verdicts: list[str]) -> str:
    """The most severe of the verdicts of compared doses (pass < review < fail)."""
    compared = [v for v in verdicts if v in ("pass", "review", "fail")]
    if not compared:
        return "not-compared"
    return max(compared, key=VERDICT_ORDER.__getitem__)
