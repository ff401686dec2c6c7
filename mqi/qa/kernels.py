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
def block_ranges(values: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest dose (NaN ignored) of each block of ``block`` (k, j, i)
    voxels of ``values``: a coarse map of the dose's range, for :func:`dose_floor`."""
    nk, nj, ni = values.shape
    bk, bj, bi = block[0], block[1], block[2]
    mk, mj, mi = (nk + bk - 1) // bk, (nj + bj - 1) // bj, (ni + bi - 1) // bi
    low = np.full((mk, mj, mi), np.inf)
    high = np.full((mk, mj, mi), -np.inf)
    for kb in prange(mk):
        for k in range(kb * bk, min((kb + 1) * bk, nk)):
            for j in range(nj):
                jb = j // bj
                for i in range(ni):
                    value = values[k, j, i]
                    if value == value:
                        ib = i // bi
                        low[kb, jb, ib] = min(low[kb, jb, ib], value)
                        high[kb, jb, ib] = max(high[kb, jb, ib], value)
    return low, high


@njit(cache=True, inline="always")
def _block_span(position: float, half: int, block: int, n: int) -> tuple[int, int]:
    """The blocks holding every voxel a trilinear sample within ``half`` - 1 index units of
    ``position`` (clamped to the grid) can read."""
    cell = min(max(math.floor(position), 0), n - 1)
    return max(cell - half, 0) // block, min(cell + half, n - 1) // block


@njit(cache=True, inline="always")
def dose_floor(
    ranges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
    fi: float,
    fj: float,
    fk: float,
    ref: float,
    inv_t2: float,
    shape: tuple[int, int, int],
) -> float:
    """A lower bound of gamma's dose term ((D_e - ref) / tol)^2 at every point within
    ``half`` - 1 index units (k, j, i) of (fi, fj, fk): trilinear interpolation never leaves
    the range of the voxels it reads, which the blocks around the point hold. ``ranges``:
    block lows, block highs, block size and ``half`` (k, j, i), and a margin in Gy that
    keeps the bound below the interpolated values' rounding."""
    low, high, block, half, margin = ranges
    k0, k1 = _block_span(fk, half[0], block[0], shape[0])
    j0, j1 = _block_span(fj, half[1], block[1], shape[1])
    i0, i1 = _block_span(fi, half[2], block[2], shape[2])
    lowest = math.inf
    highest = -math.inf
    for kb in range(k0, k1 + 1):
        for jb in range(j0, j1 + 1):
            for ib in range(i0, i1 + 1):
                lowest = min(lowest, low[kb, jb, ib])
                highest = max(highest, high[kb, jb, ib])
    gap = max(lowest - ref, ref - highest) - margin
    return gap * gap * inv_t2 if gap > 0.0 else 0.0


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
    ranges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
    within_one: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Gamma of every reference voxel where ``todo`` is set (NaN elsewhere), and the index
    of the offset where it was found (-1: none below max_gamma).

    ``offsets`` (n, 3) are (di, dj, dk) steps in evaluated-grid index units sorted by their
    squared distance-to-agreement term ``offset_d2``; the search of a voxel stops as soon as
    that term alone reaches the best gamma^2 found (nothing further can be lower) or
    max_gamma^2, which is then the voxel's value. ``dose_tolerance`` holds the dose
    criterion in Gy per reference voxel (one value for global gamma). A voxel whose whole
    search region lies outside the evaluated grid gets +inf (no evaluated dose within reach).

    ``ranges`` (block lows, block highs, block size, reach in index units + 1, margin; see
    :func:`block_ranges`) and ``within_one`` (how many offsets lie within one DTA): once a
    voxel's search passes one DTA without a pass, a lower bound of its dose term over the
    rest of its region is added to the distance term of the stop test, so a voxel whose
    neighbourhood's dose is far from its own stops at once (a voxel that passes never
    computes it)."""
    nk, nj, ni = reference.shape
    ek, ej, ei = evaluated.shape
    out = np.full(reference.shape, np.nan)
    where = np.full(reference.shape, -1, dtype=np.int64)
    local = dose_tolerance.size > 1
    limit = max_gamma * max_gamma
    shape = (ek, ej, ei)
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
                floor2 = 0.0  # within one DTA the distance term alone bounds the rest
                for n in range(offset_d2.size):
                    d2 = offset_d2[n]
                    if n == within_one and d2 < best:
                        # failed within one DTA: a bound of the dose term joins the distance term
                        floor2 = dose_floor(ranges, base_i, base_j, base_k, ref, inv_tol2, shape)
                    if d2 + floor2 >= best:
                        break  # neither this point nor any farther one can do better
                    fi = base_i + offsets[n, 0]
                    fj = base_j + offsets[n, 1]
                    fk = base_k + offsets[n, 2]
                    if fi < 0.0 or fj < 0.0 or fk < 0.0 or fi > ei - 1 or fj > ej - 1 or fk > ek - 1:
                        continue
                    diff = _trilinear(evaluated, fi, fj, fk) - ref
                    g2 = d2 + diff * diff * inv_tol2
                    if g2 < best:
                        best = g2
                        where[k, j, i] = n
                if best < limit:
                    out[k, j, i] = math.sqrt(best)
                else:  # max_gamma, or +inf when no sample point lies on the evaluated grid
                    out[k, j, i] = math.inf
                    for n in range(offset_d2.size):
                        fi = base_i + offsets[n, 0]
                        fj = base_j + offsets[n, 1]
                        fk = base_k + offsets[n, 2]
                        if 0.0 <= fi <= ei - 1 and 0.0 <= fj <= ej - 1 and 0.0 <= fk <= ek - 1:
                            out[k, j, i] = max_gamma
                            break
    return out, where


@njit(cache=True, inline="always")
def _cell_value(v: np.ndarray, a: float, b: float, c: float) -> float:
    """Trilinear inside one cell: v[dk, dj, di] corner values, (a, b, c) local in [0, 1]."""
    c00 = v[0, 0, 0] + (v[0, 0, 1] - v[0, 0, 0]) * a
    c01 = v[0, 1, 0] + (v[0, 1, 1] - v[0, 1, 0]) * a
    c10 = v[1, 0, 0] + (v[1, 0, 1] - v[1, 0, 0]) * a
    c11 = v[1, 1, 0] + (v[1, 1, 1] - v[1, 1, 0]) * a
    c0 = c00 + (c01 - c00) * b
    c1 = c10 + (c11 - c10) * b
    return c0 + (c1 - c0) * c


@njit(cache=True, inline="always")
def _cell_inside(cell: int, n: int) -> bool:
    """Cells c span voxel centres c..c+1: 0..n-2; an axis of one voxel has the cell 0."""
    return 0 <= cell <= n - 2 if n > 1 else cell == 0


@njit(cache=True, inline="always")
def _lattice_range(position: float, step: float, reach: int, n: int, cell: int) -> tuple[int, int]:
    """Lattice points ``position + m * step`` (|m| <= reach) inside evaluated cell ``cell``
    of an axis of ``n`` voxels: cells are half-open [c, c + 1) except the last, closed."""
    low = math.ceil((cell - position) / step)
    if cell >= n - 2:
        high = math.floor((n - 1 - position) / step)
    else:
        high = math.ceil((cell + 1 - position) / step) - 1
    return max(int(low), -reach), min(int(high), reach)


@njit(cache=True, inline="always")
def _local(position: float, step: float, m: int, cell: int, n: int) -> float:
    if n < 2:
        return 0.0
    return min(max(position + m * step - cell, 0.0), 1.0)


@njit(cache=True, inline="always")
def _clamp(m: int, low: int, high: int) -> int:
    return min(max(m, low), high)


@njit(cache=True, parallel=True)
def gamma_pass(
    reference: np.ndarray,
    evaluated: np.ndarray,
    todo: np.ndarray,
    ref_fi: np.ndarray,
    ref_fj: np.ndarray,
    ref_fk: np.ndarray,
    steps: np.ndarray,
    samples: int,
    dose_tolerance: np.ndarray,
    cell_order: np.ndarray,
    cell_bound: np.ndarray,
    ranges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
) -> np.ndarray:
    """Whether gamma <= 1 for every reference voxel where ``todo`` is set, over EVERY point
    of the lattice at DTA/``samples`` within one DTA of it, as an exhaustive search of that
    lattice decides: a gamma <= 1 found where one exists, +inf where none does, NaN where
    not ``todo``.

    ``steps`` is DTA/``samples`` in evaluated index units per axis, ``dose_tolerance`` the
    dose criterion in Gy per reference voxel (one value for global gamma). ``cell_order``
    (n, 3) are evaluated-cell offsets from the cell holding the reference point, sorted by
    ``cell_bound``, a lower bound of their squared distance from it in DTA^2. ``ranges``
    (as for :func:`gamma_search`, reaching one DTA) bound the voxel's dose term: with
    ``cell_bound`` they end its search once no further cell can hold a pass.

    Branch and bound over boxes of lattice points inside one evaluated cell, cells nearest
    first. Trilinear interpolation restricted to a box is the trilinear blend of the box's
    8 corner values, so the dose at its points lies between their minimum and maximum; with
    the distance of the box's nearest point that bounds gamma^2 from below over the whole
    box. A box whose bound exceeds 1 is dropped; else its corners, nearest and middle points
    are tried and it is split in two along its longest side, down to boxes whose every
    point is a corner. A voxel stops at its first pass."""
    nk, nj, ni = reference.shape
    ek, ej, ei = evaluated.shape
    out = np.full(reference.shape, np.nan)
    local = dose_tolerance.size > 1
    hi_, hj_, hk_ = steps[0], steps[1], steps[2]
    s2 = samples * samples
    inv_s2 = 1.0 / s2
    capacity = 1024  # depth-first: one box per split level, far below this
    shape = (ek, ej, ei)
    for k in prange(nk):
        boxes = np.empty((capacity, 6), dtype=np.int64)
        v = np.empty((2, 2, 2))
        corner = np.empty((2, 2, 2))
        for j in range(nj):
            for i in range(ni):
                if not todo[k, j, i]:
                    continue
                ref = reference[k, j, i]
                tol = dose_tolerance[k * nj * ni + j * ni + i] if local else dose_tolerance[0]
                inv_t2 = 1.0 / (tol * tol)
                pi, pj, pk = ref_fi[i], ref_fj[j], ref_fk[k]
                home_i, home_j, home_k = math.floor(pi), math.floor(pj), math.floor(pk)
                best = math.inf
                floor2 = dose_floor(ranges, pi, pj, pk, ref, inv_t2, shape)
                for n in range(cell_bound.size):
                    if cell_bound[n] + floor2 > 1.0 or best <= 1.0:
                        break
                    ci = home_i + cell_order[n, 0]
                    cj = home_j + cell_order[n, 1]
                    ck = home_k + cell_order[n, 2]
                    if not (_cell_inside(ci, ei) and _cell_inside(cj, ej) and _cell_inside(ck, ek)):
                        continue
                    a0, a1 = _lattice_range(pi, hi_, samples, ei, ci)
                    b0, b1 = _lattice_range(pj, hj_, samples, ej, cj)
                    c0, c1 = _lattice_range(pk, hk_, samples, ek, ck)
                    if a0 > a1 or b0 > b1 or c0 > c1:
                        continue
                    for dk in range(2):
                        kk = min(ck + dk, ek - 1)
                        for dj in range(2):
                            jj = min(cj + dj, ej - 1)
                            for di in range(2):
                                v[dk, dj, di] = evaluated[kk, jj, min(ci + di, ei - 1)]
                    boxes[0, 0], boxes[0, 1], boxes[0, 2] = a0, a1, b0
                    boxes[0, 3], boxes[0, 4], boxes[0, 5] = b1, c0, c1
                    top = 1
                    while top > 0 and best > 1.0:
                        top -= 1
                        a0, a1, b0 = boxes[top, 0], boxes[top, 1], boxes[top, 2]
                        b1, c0, c1 = boxes[top, 3], boxes[top, 4], boxes[top, 5]
                        na, nb, nc = _clamp(0, a0, a1), _clamp(0, b0, b1), _clamp(0, c0, c1)
                        near = na * na + nb * nb + nc * nc
                        if near > s2:
                            continue
                        ta0, ta1 = _local(pi, hi_, a0, ci, ei), _local(pi, hi_, a1, ci, ei)
                        tb0, tb1 = _local(pj, hj_, b0, cj, ej), _local(pj, hj_, b1, cj, ej)
                        tc0, tc1 = _local(pk, hk_, c0, ck, ek), _local(pk, hk_, c1, ck, ek)
                        low = math.inf
                        high = -math.inf
                        for dc in range(2):
                            for db in range(2):
                                for da in range(2):
                                    value = _cell_value(
                                        v, ta1 if da else ta0, tb1 if db else tb0, tc1 if dc else tc0
                                    )
                                    corner[dc, db, da] = value
                                    low = min(low, value)
                                    high = max(high, value)
                        gap = max(low - ref, ref - high, 0.0)
                        if near * inv_s2 + gap * gap * inv_t2 > 1.0:
                            continue
                        # candidates: the corners, the nearest point, the middle point
                        for dc in range(2):
                            mc = c1 if dc else c0
                            for db in range(2):
                                mb = b1 if db else b0
                                for da in range(2):
                                    ma = a1 if da else a0
                                    diff = corner[dc, db, da] - ref
                                    g2 = (ma * ma + mb * mb + mc * mc) * inv_s2 + diff * diff * inv_t2
                                    best = min(best, g2)
                        ta, tb, tc = (
                            _local(pi, hi_, na, ci, ei),
                            _local(pj, hj_, nb, cj, ej),
                            _local(pk, hk_, nc, ck, ek),
                        )
                        diff = _cell_value(v, ta, tb, tc) - ref
                        best = min(best, near * inv_s2 + diff * diff * inv_t2)
                        ma, mb, mc = (a0 + a1) // 2, (b0 + b1) // 2, (c0 + c1) // 2
                        ta, tb, tc = (
                            _local(pi, hi_, ma, ci, ei),
                            _local(pj, hj_, mb, cj, ej),
                            _local(pk, hk_, mc, ck, ek),
                        )
                        diff = _cell_value(v, ta, tb, tc) - ref
                        best = min(best, (ma * ma + mb * mb + mc * mc) * inv_s2 + diff * diff * inv_t2)
                        la, lb, lc = a1 - a0, b1 - b0, c1 - c0
                        if best <= 1.0 or max(la, lb, lc) <= 1 or top + 2 > capacity:
                            continue  # passed, or every point of the box is a corner: all tried
                        for half in range(2):
                            boxes[top + half, 0], boxes[top + half, 1] = a0, a1
                            boxes[top + half, 2], boxes[top + half, 3] = b0, b1
                            boxes[top + half, 4], boxes[top + half, 5] = c0, c1
                        if la >= lb and la >= lc:
                            axis, mid = 0, (a0 + a1) // 2
                        elif lb >= lc:
                            axis, mid = 1, (b0 + b1) // 2
                        else:
                            axis, mid = 2, (c0 + c1) // 2
                        # boxes[top + 1] is popped first: the half nearer the reference point
                        if mid < 0:
                            boxes[top + 1, 2 * axis] = mid + 1
                            boxes[top, 2 * axis + 1] = mid
                        else:
                            boxes[top + 1, 2 * axis + 1] = mid
                            boxes[top, 2 * axis] = mid + 1
                        top += 2
                out[k, j, i] = math.sqrt(best) if best <= 1.0 else math.inf
    return out
