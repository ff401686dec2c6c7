"""3D gamma index of an evaluated dose against a reference dose, in patient coordinates.

The evaluated dose is interpolated trilinearly at sub-voxel steps of the distance
criterion (``steps`` per DTA; 10 is within 0.05 points of an exhaustive search on the
APTG doses, see docs/gamma.md), in a sphere of ``max_gamma`` x DTA around each reference
voxel, nearest points first, stopping when the distance alone cannot improve the result.
Pass is gamma <= 1. A reference voxel with no evaluated dose within reach fails and is
counted in ``uncovered``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mqi.config import GammaCriterionConfig
from mqi.qa.grids import DoseGrid, index_coordinates
from mqi.qa.kernels import gamma_search

DEFAULT_STEPS_PER_DTA = 10
DEFAULT_MAX_GAMMA = 2.0
DEFAULT_REFINE_MARGIN = 0.3

_CRITERION = re.compile(
    r"^\s*(?P<dose>[\d.]+)\s*%\s*/\s*(?P<dta>[\d.]+)\s*mm\s*(/\s*(?P<cutoff>[\d.]+)\s*%)?"
    r"\s*(?P<local>\s*(local|l)|\s*(global|g))?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class GammaCriterion:
    """One gamma test: dose % / distance mm, low-dose cutoff % of the reference max."""

    dose_percent: float
    distance_mm: float
    cutoff_percent: float = 10.0
    local: bool = False

    @property
    def label(self) -> str:
        kind = " local" if self.local else ""
        return f"{_num(self.dose_percent)}%/{_num(self.distance_mm)}mm/{_num(self.cutoff_percent)}%{kind}"


def _num(value: float) -> str:
    return f"{value:g}"


def parse_criterion(text: str) -> GammaCriterion:
    """``3%/3mm``, ``2%/2mm/10%``, ``3%/2mm/10% local`` -> GammaCriterion; ValueError otherwise."""
    match = _CRITERION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a gamma criterion such as 3%/3mm/10% (local or global)")
    local = (match.group("local") or "").strip().lower() in ("local", "l")
    cutoff = match.group("cutoff")
    criterion = GammaCriterion(
        float(match.group("dose")), float(match.group("dta")), float(cutoff) if cutoff else 10.0, local
    )
    if criterion.dose_percent <= 0 or criterion.distance_mm <= 0:
        raise ValueError(f"{text!r}: dose and distance must be positive")
    return criterion


def criterion_config(text: str, default_pass_rate: float = 95.0) -> GammaCriterionConfig:
    """``mqi compare/report --criteria``: ``3%/3mm/10%`` or ``2%/2mm/10%>=90`` (pass rate
    in %, default ``default_pass_rate``), ``local`` allowed at the end -> the config model."""
    head, _, required = text.partition(">=")
    if required and "local" in required.lower():
        head, required = head + " local", required.lower().replace("local", "")
    criterion = parse_criterion(head)
    try:
        rate = float(required.strip().rstrip("%")) if required.strip() else default_pass_rate
    except ValueError:
        raise ValueError(f"{text!r}: the pass rate after >= is not a number") from None
    return GammaCriterionConfig(
        dose=criterion.dose_percent,
        distance=criterion.distance_mm,
        cutoff=criterion.cutoff_percent,
        pass_rate=rate,
        local=criterion.local,
    )


@dataclass(frozen=True)
class GammaResult:
    criterion: GammaCriterion
    gamma: np.ndarray  # on the reference grid; NaN below the cutoff, inf where uncovered
    evaluated_voxels: int
    passed_voxels: int
    uncovered_voxels: int
    normalisation_gy: float

    @property
    def pass_rate(self) -> float:
        """Percent of the reference voxels above the cutoff with gamma <= 1."""
        return 100.0 * self.passed_voxels / self.evaluated_voxels if self.evaluated_voxels else math.nan

    @property
    def coverage(self) -> float:
        """Percent of the reference voxels above the cutoff with evaluated dose within reach."""
        if not self.evaluated_voxels:
            return math.nan
        return 100.0 * (self.evaluated_voxels - self.uncovered_voxels) / self.evaluated_voxels

    def finite(self) -> np.ndarray:
        values = self.gamma[~np.isnan(self.gamma)]
        return values[np.isfinite(values)]

    @property
    def mean(self) -> float:
        values = self.finite()
        return float(values.mean()) if values.size else math.nan

    def percentile(self, q: float) -> float:
        values = self.gamma[~np.isnan(self.gamma)]  # inf (uncovered) sorts last
        return float(np.percentile(values, q)) if values.size else math.nan

    @property
    def maximum(self) -> float:
        values = self.gamma[~np.isnan(self.gamma)]
        return float(values.max()) if values.size else math.nan


@lru_cache(maxsize=16)
def search_offsets(
    distance_mm: float, spacing: tuple[float, float, float], steps: int, max_gamma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sample offsets of a sphere of radius max_gamma x DTA at DTA/steps, as evaluated-grid
    index steps sorted by distance, with their (distance / DTA)^2."""
    step = distance_mm / steps
    reach = math.floor(max_gamma * steps)
    span = np.arange(-reach, reach + 1, dtype=float) * step
    ox, oy, oz = np.meshgrid(span, span, span, indexing="ij")
    d2 = (ox**2 + oy**2 + oz**2).ravel() / distance_mm**2
    keep = d2 < max_gamma**2
    order = np.argsort(d2[keep], kind="stable")
    dx, dy, dz = spacing
    offsets = np.stack([ox.ravel()[keep] / dx, oy.ravel()[keep] / dy, oz.ravel()[keep] / dz], axis=1)
    return np.ascontiguousarray(offsets[order]), np.ascontiguousarray(d2[keep][order])


def _search(
    reference: DoseGrid,
    evaluated: DoseGrid,
    todo: np.ndarray,
    tolerance: np.ndarray,
    criterion: GammaCriterion,
    steps: int,
    max_gamma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(gamma, best point in mm from each reference voxel; NaN where none)."""
    offsets, d2 = search_offsets(criterion.distance_mm, evaluated.spacing, steps, max_gamma)
    gamma, where = gamma_search(
        np.ascontiguousarray(reference.values, dtype=np.float64),
        np.ascontiguousarray(evaluated.values, dtype=np.float64),
        todo,
        *_reference_indices(reference, evaluated),
        offsets,
        d2,
        tolerance,
        max_gamma,
    )
    offsets_mm = offsets * np.asarray(evaluated.spacing)
    best = np.where((where >= 0)[..., None], offsets_mm[np.maximum(where, 0)], np.nan)
    return gamma, best


def _reference_indices(reference: DoseGrid, evaluated: DoseGrid) -> tuple[np.ndarray, ...]:
    return (
        index_coordinates(evaluated, reference.x, "x"),
        index_coordinates(evaluated, reference.y, "y"),
        index_coordinates(evaluated, reference.z, "z"),
    )


def gamma_index(
    reference: DoseGrid,
    evaluated: DoseGrid,
    criterion: GammaCriterion,
    *,
    steps: int = DEFAULT_STEPS_PER_DTA,
    max_gamma: float = DEFAULT_MAX_GAMMA,
    normalisation_gy: float | None = None,
    refine_margin: float = DEFAULT_REFINE_MARGIN,
) -> GammaResult:
    """Gamma of ``evaluated`` against ``reference`` on the reference grid.

    Global gamma: the dose criterion is a percentage of ``normalisation_gy`` (default: the
    reference maximum); local: of each reference voxel's dose. The cutoff is always a
    percentage of the normalisation dose. Gamma values at or above ``max_gamma`` are
    reported as ``max_gamma``.

    Two passes when ``steps`` is even: every voxel at DTA/(steps/2), whose sample points
    are a subset of the fine ones, so a voxel passing there passes at DTA/steps too; then
    the voxels within ``refine_margin`` above 1 again at DTA/steps, up to gamma 1. Pass
    rates equal those of a single fine pass as long as the margin covers the coarse
    sampling error (tested against an exhaustive search); gamma values above 1, and the
    values of voxels that passed the coarse pass, keep their coarse (slightly high) value."""
    ref = np.ascontiguousarray(reference.values, dtype=np.float64)
    norm = float(normalisation_gy if normalisation_gy is not None else ref.max(initial=0.0))
    if norm <= 0:
        raise ValueError("the reference dose is zero everywhere")
    todo = ref >= criterion.cutoff_percent / 100.0 * norm
    if criterion.local:
        tolerance = np.maximum(ref.ravel() * criterion.dose_percent / 100.0, 1e-12)
    else:
        tolerance = np.array([criterion.dose_percent / 100.0 * norm])
    if steps % 2 or refine_margin <= 0:
        gamma, _ = _search(reference, evaluated, todo, tolerance, criterion, steps, max_gamma)
    else:
        gamma, _ = _search(reference, evaluated, todo, tolerance, criterion, steps // 2, max_gamma)
        near = todo & (gamma > 1.0) & (gamma <= 1.0 + refine_margin)
        fine, _ = _search(reference, evaluated, near, tolerance, criterion, steps, 1.0)
        improved = near & (fine < 1.0)
        gamma[improved] = fine[improved]
    considered = ~np.isnan(gamma)
    return GammaResult(
        criterion=criterion,
        gamma=gamma,
        evaluated_voxels=int(considered.sum()),
        passed_voxels=int((gamma[considered] <= 1.0).sum()),
        uncovered_voxels=int(np.isinf(gamma).sum()),
        normalisation_gy=norm,
    )
