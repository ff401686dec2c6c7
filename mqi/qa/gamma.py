"""3D gamma index of an evaluated dose against a reference dose, in patient coordinates.

The evaluated dose is interpolated trilinearly (mandatory on a 2 mm grid, see
docs/gamma.md). Gamma values come from a coarse lattice of sample points (DTA/5 with the
default ``steps`` 10) in a sphere of ``max_gamma`` x DTA around each reference voxel,
nearest points first, stopping when the distance term, plus a lower bound of the dose
term once the voxel has failed within one DTA, cannot improve the result. Whether
a voxel failing there passes is then decided over EVERY point of the lattice at
DTA/(4 steps) within one DTA, by a branch and bound that gives what an exhaustive search
on that lattice gives (DTA/40 by default; tests compare with one). The dose term's bound
comes from the evaluated dose's range per block of about one DTA (trilinear interpolation
stays within the range of the voxels it reads): a voxel whose neighbourhood's dose is far
from its own is decided after a few loads instead of thousands of samples. Pass is gamma <= 1.
A reference voxel with no evaluated dose within reach fails and is counted in
``uncovered``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mqi.config import GammaCriterionConfig
from mqi.qa.grids import DoseGrid, index_coordinates
from mqi.qa.kernels import block_ranges, gamma_pass, gamma_search

DEFAULT_STEPS_PER_DTA = 10
DEFAULT_MAX_GAMMA = 2.0
SAMPLES_PER_STEP = 4

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
def cell_order(distance_mm: float, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of the evaluated cells within one DTA of a point, from the cell holding it,
    sorted by a lower bound of their squared distance from the point in DTA^2."""
    spans, bounds = [], []
    for size in spacing:
        reach = math.ceil(distance_mm / size) + 1
        offsets = np.arange(-reach, reach + 1)
        spans.append(offsets)
        bounds.append((np.maximum(np.abs(offsets) - 1, 0) * size / distance_mm) ** 2)
    di, dj, dk = (a.ravel() for a in np.meshgrid(*spans, indexing="ij"))
    bi, bj, bk = (a.ravel() for a in np.meshgrid(*bounds, indexing="ij"))
    bound = bi + bj + bk
    keep = bound <= 1.0
    order = np.argsort(bound[keep], kind="stable")
    offsets = np.stack([di[keep], dj[keep], dk[keep]], axis=1)[order]
    return np.ascontiguousarray(offsets, dtype=np.int64), np.ascontiguousarray(bound[keep][order])


def coarse_steps(steps: int) -> int:
    """Sample points per DTA of the first pass: ``steps``/2 (DTA/5 at the default 10), or
    ``steps`` when odd; either divides the fine lattice's 4 x ``steps``, so the first pass's
    points are fine lattice points too."""
    return steps // 2 if steps % 2 == 0 else steps


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


Ranges = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]


def reach_index_units(distance_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """Index units (k, j, i) to cover ``distance_mm`` plus the voxels interpolation reads."""
    return np.array([math.ceil(distance_mm / abs(size)) + 1 for size in reversed(spacing)], dtype=np.int64)


BlockRanges = tuple[np.ndarray, np.ndarray, np.ndarray, float]


def dose_ranges(reference: np.ndarray, evaluated: DoseGrid, distance_mm: float) -> BlockRanges:
    """The evaluated dose's lowest and highest value per block of about one DTA (for the
    kernels' bound of the dose term), the block size (k, j, i), and a margin in Gy far
    above the interpolation's rounding and far below any dose criterion."""
    values = np.ascontiguousarray(evaluated.values, dtype=np.float64)
    block = reach_index_units(distance_mm, evaluated.spacing)
    low, high = block_ranges(values, block)
    finite = np.abs(values[np.isfinite(values)])
    scale = max(float(finite.max(initial=0.0)), float(np.abs(reference).max(initial=0.0)))
    return low, high, block, 1e-9 * scale


def _ranges(parts: BlockRanges, distance_mm: float, spacing: tuple[float, float, float]) -> Ranges:
    """``parts`` with the reach of a search of ``distance_mm``."""
    low, high, block, margin = parts
    return low, high, block, reach_index_units(distance_mm, spacing), margin


def _search(
    reference: DoseGrid,
    evaluated: DoseGrid,
    todo: np.ndarray,
    tolerance: np.ndarray,
    criterion: GammaCriterion,
    steps: int,
    max_gamma: float,
    ranges: BlockRanges,
) -> tuple[np.ndarray, np.ndarray]:
    """(gamma, index of the best offset; -1 where none is below max_gamma)."""
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
        _ranges(ranges, max_gamma * criterion.distance_mm, evaluated.spacing),
        int(np.searchsorted(d2, 1.0, side="right")),
    )
    return gamma, where


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
) -> GammaResult:
    """Gamma of ``evaluated`` against ``reference`` on the reference grid.

    Global gamma: the dose criterion is a percentage of ``normalisation_gy`` (default: the
    reference maximum); local: of each reference voxel's dose. The cutoff is always a
    percentage of the normalisation dose. Gamma values at or above ``max_gamma`` are
    reported as ``max_gamma``.

    Two passes: every voxel on the coarse lattice (``coarse_steps``), then the voxels above
    1 there on the lattice at DTA/(4 steps), which holds the first. The pass (gamma <= 1)
    is exactly the finer lattice's. The value of a passing voxel is the smallest found (an
    upper bound, within the coarse step of the minimum: on the APTG pair the mean gamma
    reads about 0.06 high), a failing voxel keeps its coarse value."""
    ref = np.ascontiguousarray(reference.values, dtype=np.float64)
    norm = float(normalisation_gy if normalisation_gy is not None else ref.max(initial=0.0))
    if norm <= 0:
        raise ValueError("the reference dose is zero everywhere")
    todo = ref >= criterion.cutoff_percent / 100.0 * norm
    if criterion.local:
        tolerance = np.maximum(ref.ravel() * criterion.dose_percent / 100.0, 1e-12)
    else:
        tolerance = np.array([criterion.dose_percent / 100.0 * norm])
    samples = SAMPLES_PER_STEP * steps
    # 1. every voxel on the coarse lattice up to max_gamma: the gamma values
    coarse = coarse_steps(steps)
    ranges = dose_ranges(ref, evaluated, criterion.distance_mm)
    gamma, _ = _search(reference, evaluated, todo, tolerance, criterion, coarse, max_gamma, ranges)
    # 2. the voxels failing there: whether ANY point of the lattice at DTA/(4 steps), a
    #    superset of the first, passes (what an exhaustive search on it decides)
    rest = todo & (gamma > 1.0)
    offsets, bounds = cell_order(criterion.distance_mm, evaluated.spacing)
    fine = gamma_pass(
        ref,
        np.ascontiguousarray(evaluated.values, dtype=np.float64),
        rest,
        *_reference_indices(reference, evaluated),
        criterion.distance_mm / samples / np.asarray(evaluated.spacing, dtype=np.float64),
        samples,
        tolerance,
        offsets,
        bounds,
        _ranges(ranges, criterion.distance_mm, evaluated.spacing),
    )
    passed = rest & (fine <= 1.0)
    gamma[passed] = fine[passed]
    considered = ~np.isnan(gamma)
    return GammaResult(
        criterion=criterion,
        gamma=gamma,
        evaluated_voxels=int(considered.sum()),
        passed_voxels=int((gamma[considered] <= 1.0).sum()),
        uncovered_voxels=int(np.isinf(gamma).sum()),
        normalisation_gy=norm,
    )
