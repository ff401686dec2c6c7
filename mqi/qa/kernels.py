"""Compiled numerical kernels (numba, parallel over reference slices, cached on disk).

Indices here are fractional voxel indices of the evaluated grid; coordinates in mm are
converted by the callers. Outside the evaluated grid's voxel centres a dose is undefined
(NaN), never zero: a missing dose must not pass a gamma test by accident.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _trilinear(values: np.ndarray, fi: float, fj: float, fk: float) -> float:
    """values[k, j, i] interpolated at fractional (i, j, k); NaN outside."""
    nk, nj, ni = values.shape
    if fi < 0.0 or fj < 0.0 or fk < 0.0 or fi > ni - 1 or fj > nj - 1 or fk > nk - 1:
        return math.nan
    i0 = min(int(fi), ni - 2) if ni > 1 else 0
    j0 = min(int(fj), nj - 2) if nj > 1 else 0
    k0 = min(int(fk), nk - 2) if nk > 1 else 0
    ti = fi - i0
    tj = fj - j0
    tk = fk - k0
    i1 = i0 + 1 if ni > 1 else 0
    j1 = j0 + 1 if nj > 1 else 0
    k1 = k0 + 1 if nk > 1 else 0
    c00 = values[k0, j0, i0] * (1.0 - ti) + values[k0, j0, i1] * ti
    c01 = values[k0, j1, i0] * (1.0 - ti) + values[k0, j1, i1] * ti
    c10 = values[k1, j0, i0] * (1.0 - ti) + values[k1, j0, i1] * ti
    c11 = values[k1, j1, i0] * (1.0 - ti) + values[k1, j1, i1] * ti
    c0 = c00 * (1.0 - tj) + c01 * tj
    c1 = c10 * (1.0 - tj) + c11 * tj
    return c0 * (1.0 - tk) + c1 * tk


@njit(cache=True, parallel=True)
def trilinear_at(values: np.ndarray, fi: np.ndarray, fj: np.ndarray, fk: np.ndarray) -> np.ndarray:
    """``values`` interpolated on the lattice of fractional indices fk x fj x fi."""
    out = np.empty((fk.size, fj.size, fi.size))
    for k in prange(fk.size):
        for j in range(fj.size):
            for i in range(fi.size):
                out[k, j, i] = _trilinear(values, fi[i], fj[j], fk[k])
    return out


@njit(cache=True, parallel=True)
def gamma_search(
    reference: np.ndarray,
    evaluated: np.ndarray,
    todo: np.ndarray,
    ref_fi: np.ndarray,
    ref_fj: np.ndarray,
    ref_fk: np.ndarray,
    offsets: np.ndarray,
    offset_d2: np.ndarray,
    dose_tolerance: np.ndarray,
    max_gamma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Gamma of every reference voxel where ``todo`` is set (NaN elsewhere), and the index
    of the offset where it was found (-1: none below max_gamma).

    ``offsets`` (n, 3) are (di, dj, dk) steps in evaluated-grid index units sorted by their
    squared distance-to-agreement term ``offset_d2``; the search of a voxel stops as soon as
    that term alone reaches the best gamma^2 found (nothing further can be lower) or
    max_gamma^2, which is then the voxel's value. ``dose_tolerance`` holds the dose
    criterion in Gy per reference voxel (one value for global gamma). A voxel whose whole
    search region lies outside the evaluated grid gets +inf (no evaluated dose within reach)."""
    nk, nj, ni = reference.shape
    ek, ej, ei = evaluated.shape
    out = np.full(reference.shape, np.nan)
    where = np.full(reference.shape, -1, dtype=np.int64)
    local = dose_tolerance.size > 1
    limit = max_gamma * max_gamma
    for k in prange(nk):
        for j in range(nj):
            for i in range(ni):
                if not todo[k, j, i]:
                    continue
                ref = reference[k, j, i]
                tol = dose_tolerance[k * nj * ni + j * ni + i] if local else dose_tolerance[0]
                inv_tol2 = 1.0 / (tol * tol)
                base_i = ref_fi[i]
                base_j = ref_fj[j]
                base_k = ref_fk[k]
                best = limit
                found = False
                for n in range(offset_d2.size):
                    d2 = offset_d2[n]
                    if d2 >= best:
                        break
                    fi = base_i + offsets[n, 0]
                    fj = base_j + offsets[n, 1]
                    fk = base_k + offsets[n, 2]
                    if fi < 0.0 or fj < 0.0 or fk < 0.0 or fi > ei - 1 or fj > ej - 1 or fk > ek - 1:
                        continue
                    found = True
                    diff = _trilinear(evaluated, fi, fj, fk) - ref
                    g2 = d2 + diff * diff * inv_tol2
                    if g2 < best:
                        best = g2
                        where[k, j, i] = n
                out[k, j, i] = math.sqrt(best) if found else math.inf
    return out, where
