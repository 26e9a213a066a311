"""S1: least squares of every feature on one design, and within-batch residual sums of squares.

``docs/methods.md`` §1.2. Works on float64 arrays, samples × features, one block of features at a time.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
from scipy.linalg.blas import dgemm

from .blocks import BLOCK_BYTES, block_size, layout_slices, row_major, run_blocks, to_float64
from .parallel import run_parallel

__all__ = ["GramSolver", "residual_ss", "within_fit", "within_steps", "within_blocks", "batch_residual_ss",
           "residual_blocks", "sub_gemm"]


class GramSolver:
    """The least-squares solver of the design ``W`` (normal equations), computed once for all feature blocks.

    ``coef = (W'W)^-1 W' Y``: the normal equations, solved by a Cholesky factorization of the small
    ``k × k`` Gram matrix, exactly as sva and neuroCombat compute S1 (``solve(crossprod(design), ...)``).
    Only BLAS-3 products touch the ``n × k`` design (a tall LAPACK QR is slow for small ``k`` when BLAS
    threads compete). The caller has checked that ``W`` has full column rank and is not nearly
    confounded (:func:`featharm.design.check_full_rank`); should the Gram matrix still not be positive
    definite, a pseudo-inverse (SVD) is used instead.
    """

    def __init__(self, W: np.ndarray):
        self.W = np.asfortranarray(W, dtype=np.float64)
        G = self.W.T @ self.W
        try:
            c = sla.cho_factor(G, lower=False, check_finite=False)
            P = sla.cho_solve(c, self.W.T, check_finite=False)
            ok = np.isfinite(P).all()
        except np.linalg.LinAlgError:
            ok = False
        if not ok:
            P = np.linalg.pinv(self.W)
        self.P = np.ascontiguousarray(P)  # k × n: coef = P Y, one GEMM per block

    def solve(self, Y: np.ndarray) -> np.ndarray:
        """Least-squares coefficients (k × b) of every column of ``Y`` (n × b) on ``W``: S1.

        One GEMM on a float64 table of either layout (a long inner dimension wants it whole); a float32
        table is converted in float64 blocks (no float64 copy of the whole table).
        """
        if Y.dtype == np.float64:
            return self.P @ Y
        n, p = Y.shape
        if row_major(Y):  # sum over blocks of rows (large blocks: each adds to the whole k × p result)
            coef = np.zeros((self.P.shape[0], p))
            size = max(1, min(n, 16 * BLOCK_BYTES // (8 * p)))
            buf = np.empty((size, p))
            for start in range(0, n, size):
                rows = slice(start, min(n, start + size))
                coef += self.P[:, rows] @ to_float64(Y[rows], buf[:rows.stop - start])
            return coef
        coef = np.empty((self.P.shape[0], p))
        size = block_size(Y, 4 * BLOCK_BYTES)

        def part(blocks):  # feature blocks are independent: shared between threads
            buf = np.empty((n, size), order="F")
            for cols in blocks:
                np.matmul(self.P, to_float64(Y[:, cols], buf[:, :cols.stop - cols.start]), out=coef[:, cols])

        run_blocks(part, layout_slices(Y, 4 * BLOCK_BYTES), Y.size)
        return coef


def sub_gemm(A: np.ndarray, C: np.ndarray, out: np.ndarray, sign: float) -> None:
    """``out += sign * A @ C`` in place (``out`` Fortran-ordered), without an n × b temporary."""
    if A.shape[1] == 0:
        return
    res = dgemm(sign, A, C, 1.0, out, overwrite_c=True)
    if res is not out and not np.shares_memory(res, out):  # pragma: no cover - BLAS copied
        out[...] = res


def residual_ss(Y: np.ndarray, W: np.ndarray, coef: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Sum of squared residuals of ``Y - W @ coef`` within each batch (m × b); ``onehot`` is n × m."""
    R = np.array(Y, dtype=np.float64, order="F", copy=True)
    sub_gemm(W, coef, R, -1.0)
    np.square(R, out=R)
    return dgemm(1.0, onehot, R, trans_a=1)


def within_fit(Y: np.ndarray, batch_rows: np.ndarray, X: np.ndarray, codes: np.ndarray,
               progress=None) -> tuple[np.ndarray, np.ndarray] | None:
    """S1 and the within-batch residual sums of squares of every feature on ``W = [B | X]``.

    ``B`` is ``batch_rows[codes]`` (the m batch columns: indicators, or with a reference batch its column of
    ones), ``X`` (n × q) the covariates. Returns ``(coef, ss)``: the least-squares coefficients ((m + q) × p,
    batch columns first, as :class:`GramSolver` gives them) and the per-batch residual sums of squares
    (m × p, as :func:`batch_residual_ss`). Returns None when the covariates centred within batches are
    numerically rank deficient (the caller then solves the normal equations of ``W``).

    This is the within-batch (fixed-effects) form of the same least squares: with ``x̄_i``/``ȳ_i`` the
    batch means and ``X_c = X - x̄_b`` the covariates centred within their batch (orthogonal to every batch
    column), ``beta = (X_c'X_c)^-1 X_c'Y``, the batch coefficients are ``ȳ_i - x̄_i beta`` (mapped through
    ``batch_rows``) and the residuals ``y - ȳ_b - x_c beta``. It needs the per-batch sums and a q-column
    product instead of an (m + q)-column GEMM, and it is more accurate than the normal equations of ``W``,
    whose batch columns are nearly collinear with an uncentred covariate such as age.

    A column-major table is read once: each block of features is gathered with its rows in batch order
    (each batch a contiguous range) and everything is computed from that cache-resident copy. A row-major
    table is read twice, a batch's rows at a time: the per-batch sums and ``X_c'Y``, then the residuals.
    The blocks do not depend on the threads and every sum has a fixed order, so the result is the same to
    the bit for any number of threads; a column holding NaN gives NaN (in that column only). ``progress`` (optional)
    is called :func:`within_steps` times.
    """
    n, p = Y.shape
    m = batch_rows.shape[0]
    order = np.argsort(codes, kind="stable")  # rows grouped by batch, in their order within a batch
    bounds = np.searchsorted(codes[order], np.arange(m + 1))
    counts = np.diff(bounds)
    if (counts == 0).any():
        return None
    Xs = np.asarray(X, dtype=np.float64)[order]
    q = Xs.shape[1]
    xbar = np.add.reduceat(Xs, bounds[:-1], axis=0) / counts[:, None] if q else np.zeros((m, 0))
    Xcs = Xs - np.repeat(xbar, counts, axis=0)  # centred within batches, rows in batch order (n × q)
    factor = None
    if q:
        try:
            factor = sla.cho_factor(Xcs.T @ Xcs, lower=False, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        if not np.isfinite(factor[0]).all():
            return None
    mapped = not np.array_equal(batch_rows, np.eye(m))
    to_coef = np.linalg.inv(batch_rows) if mapped else None  # exact here: entries 0 and ±1
    coef = np.empty((m + q, p))

    def store(cols, ybar, beta):
        """The coefficients of the features ``cols`` from their batch means (m × w) and ``beta`` (q × w)."""
        a = ybar - xbar @ beta if q else ybar  # the indicator coefficients
        coef[:m, cols] = to_coef @ a if mapped else a
        if q:
            coef[m:, cols] = beta

    if row_major(Y):
        ss = _within_rows(Y, codes, order, bounds, Xcs, factor, store, progress)
    else:
        ss = _within_columns(Y, order, bounds, Xcs, factor, store, progress)
    return coef, ss


def within_steps(Y: np.ndarray, m: int) -> int:
    """How many times :func:`within_fit` calls its ``progress`` (blocks of features, or twice per batch)."""
    return 2 * m if row_major(Y) else len(within_blocks(Y))


def within_blocks(Y: np.ndarray) -> list[slice]:
    """The blocks of features of :func:`within_fit` on a column-major table (~``BLOCK_BYTES`` of float64 each)."""
    n, p = Y.shape
    size = max(1, min(p, BLOCK_BYTES // (8 * n)))
    return [slice(s, min(p, s + size)) for s in range(0, p, size)]


def _within_columns(Y, order, bounds, Xcs, factor, store, progress):
    """:func:`within_fit` of a column-major table: one pass over blocks of features."""
    n, p = Y.shape
    m = bounds.size - 1
    q = Xcs.shape[1]
    counts = np.diff(bounds)
    starts = bounds[:-1]
    inv_counts = 1.0 / counts[:, None]
    Xct = np.ascontiguousarray(Xcs.T)  # q × n
    Yt = Y.T  # p × n, C order (a view)
    blocks = within_blocks(Y)
    size = blocks[0].stop - blocks[0].start
    ss = np.empty((m, p))

    def part(blocks):
        T = np.empty((size, n))  # a block, rows in batch order, feature × row (C order)
        F = np.empty((size, n))  # the block as read, then its fitted values
        sums = np.empty((size, m))
        for cols in blocks:
            w = cols.stop - cols.start
            t, f = T[:w], F[:w]
            # the block is copied in memory order first (float32 to float64 on the way), then gathered in batch
            # order from that cache-resident copy: a gather straight from main memory waits on every cache line
            np.copyto(f, Yt[cols])
            np.take(f, order, axis=1, out=t, mode="wrap")
            s = np.add.reduceat(t, starts, axis=1, out=sums[:w])  # w × m (pairwise sums)
            ybar = s.T * inv_counts  # m × w
            if q:
                beta = sla.cho_solve(factor, Xct @ t.T, check_finite=False)  # q × w
                np.matmul(beta.T, Xct, out=f)
                f += np.repeat(ybar.T, counts, axis=1)
            else:
                beta = None
                f[...] = np.repeat(ybar.T, counts, axis=1)
            store(cols, ybar, beta)
            t -= f
            np.square(t, out=t)
            ss[:, cols] = np.add.reduceat(t, starts, axis=1, out=sums[:w]).T
            if progress is not None:
                progress()

    run_blocks(part, blocks, Y.size)
    return ss


CROSS_BYTES = 64 * 2**20  # up to this size, a row-major table's X_c'Y is kept per batch (m × q × p values)


def _within_rows(Y, codes, order, bounds, Xcs, factor, store, progress):
    """:func:`within_fit` of a row-major table: the batches' rows a block at a time, twice (the sums, then the
    residuals). The batches are dealt between the threads and each batch's ``X_c'Y`` is kept apart, so that
    they are added in batch order whatever the threads; when those m × q × p values would take more than
    :data:`CROSS_BYTES`, one thread adds them up in batch order instead."""
    n, p = Y.shape
    m = bounds.size - 1
    q = Xcs.shape[1]
    counts = np.diff(bounds)
    size = block_size(Y)
    sums = np.zeros((m, p))
    apart = m * q * p * 8 <= CROSS_BYTES
    cross = np.zeros((m if apart else 1, q, p))  # X_c'Y of each batch's rows (or of all rows)

    def part(batches):
        R = np.empty((size, p))
        raw = R if Y.dtype == np.float64 else np.empty((size, p), dtype=Y.dtype)
        row = np.empty(p)
        for i in batches:
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            acc = cross[i if apart else 0]
            for start in range(lo, hi, size):
                stop = min(hi, start + size)
                r = R[:stop - start]
                np.take(Y, order[start:stop], axis=0, out=raw[:stop - start], mode="wrap")
                if raw is not R:
                    np.copyto(r, raw[:stop - start])
                sums[i] += np.add.reduce(r, axis=0, out=row)
                if q:
                    acc += Xcs[start:stop].T @ r
            if progress is not None:
                progress()

    if apart:
        run_blocks(part, [int(i) for i in np.argsort(-counts, kind="stable")], Y.size)  # largest batches first
    else:
        run_parallel(part, [list(range(m))])
    ybar = sums / counts[:, None]
    beta = sla.cho_solve(factor, np.add.reduce(cross, axis=0), check_finite=False) if q else None
    store(slice(None), ybar, beta)
    Xc = np.empty_like(Xcs)
    Xc[order] = Xcs  # back in the rows' own order
    return _batch_residual_ss_rows(Y, ybar, Xc, beta if q else np.zeros((0, p)), codes, progress)


def batch_residual_ss(Y: np.ndarray, batch_fit: np.ndarray, X: np.ndarray, coef_x: np.ndarray,
                      codes: np.ndarray, onehot: np.ndarray | None = None, progress=None) -> np.ndarray:
    """:func:`residual_ss` for a design ``[B | X]`` whose batch part is gathered, not multiplied.

    ``batch_fit`` (m × b) is the fitted value of the batch columns for a row of each batch
    (``batch_rows @ coef[:m]``), ``X`` (n × q) the covariate block and ``coef_x`` (q × b) its coefficients.
    The fitted values are ``batch_fit[codes] + X @ coef_x``: a gather and a thin GEMM instead of a GEMM
    with all ``m + q`` columns.

    ``Y`` (n × b) is a whole table or a block, float64 or float32, row- or column-major, read once in
    cache-sized blocks that follow its layout (never copied), with its rows grouped by batch: for a
    column-major table, each block of features is gathered with its rows in batch order (each batch is then
    a contiguous range of every feature, whose squared residuals are one dot product); for a row-major one,
    each batch's rows are gathered a block at a time and their squared residuals summed down the rows.
    ``onehot`` is not used (kept for callers that pass it). ``progress`` (optional) is called once per block.
    """
    m = batch_fit.shape[0]
    if row_major(Y):
        return _batch_residual_ss_rows(Y, batch_fit, X, coef_x, codes, progress)
    n, p = Y.shape
    Xc = np.ascontiguousarray(X, dtype=np.float64)
    q = Xc.shape[1]
    order = np.argsort(codes, kind="stable")  # rows grouped by batch: each batch a contiguous range
    sorted_codes = codes[order]
    bounds = np.searchsorted(sorted_codes, np.arange(m + 1))
    Xt = np.ascontiguousarray(Xc[order].T)  # q × n, rows in that order
    fit_t = np.ascontiguousarray(batch_fit.T)  # b × m
    Yt = Y.T  # b × n, C order (a view)
    size = block_size(Y)
    ss = np.empty((m, p))

    def part(blocks):
        T = np.empty((size, n))  # a block's residuals, rows in that order, feature × row (C order)
        raw = T if Y.dtype == np.float64 else np.empty((size, n), dtype=Y.dtype)
        G = np.empty((size, n))
        for cols in blocks:
            w = cols.stop - cols.start
            t = T[:w]
            np.take(Yt[cols], order, axis=1, out=raw[:w], mode="wrap")
            if raw is not T:
                np.copyto(t, raw[:w])
            t -= np.take(fit_t[cols], sorted_codes, axis=1, out=G[:w], mode="wrap")
            if q:
                t -= np.matmul(coef_x[:, cols].T, Xt, out=G[:w])
            for i in range(m):  # one dot product per feature and batch (accurate, as a GEMM's sums)
                r = t[:, bounds[i]:bounds[i + 1]]
                ss[i, cols] = np.vecdot(r, r)
            if progress is not None:
                progress()

    run_blocks(part, layout_slices(Y), Y.size)
    return ss


def residual_blocks(Y: np.ndarray, m: int) -> int:
    """How many blocks :func:`batch_residual_ss` processes ``Y`` in (for a progress bar)."""
    return m if row_major(Y) else len(layout_slices(Y))


def _batch_residual_ss_rows(Y, batch_fit, X, coef_x, codes, progress):
    """:func:`batch_residual_ss` of a row-major table: each batch's rows, a block at a time (the batches
    are dealt between the threads; each batch's sum is computed by one of them, in row order)."""
    n, p = Y.shape
    m = batch_fit.shape[0]
    q = X.shape[1]
    Xc = np.ascontiguousarray(X, dtype=np.float64)
    coef_x = np.ascontiguousarray(coef_x)
    order = np.argsort(codes, kind="stable")  # rows grouped by batch, in their order within a batch
    bounds = np.searchsorted(codes[order], np.arange(m + 1))
    size = block_size(Y)
    ss = np.zeros((m, p))

    def part(batches):
        R = np.empty((size, p))
        raw = R if Y.dtype == np.float64 else np.empty((size, p), dtype=Y.dtype)
        F = np.empty((size, p)) if q else None
        col = np.empty(p)
        for i in batches:
            idx_i = order[bounds[i]:bounds[i + 1]]
            for start in range(0, idx_i.size, size):
                idx = idx_i[start:start + size]
                h = idx.size
                r = R[:h]
                np.take(Y, idx, axis=0, out=raw[:h], mode="wrap")
                if raw is not R:
                    np.copyto(r, raw[:h])
                r -= batch_fit[i]
                if q:
                    r -= np.matmul(Xc[idx], coef_x, out=F[:h])
                np.square(r, out=r)
                ss[i] += np.add.reduce(r, axis=0, out=col)
            if progress is not None:
                progress()

    # largest batches first, so that the threads get similar shares of rows
    run_blocks(part, [int(i) for i in np.argsort(-(bounds[1:] - bounds[:-1]), kind="stable")], Y.size)
    return ss


def batch_indicators_f(codes: np.ndarray, m: int) -> np.ndarray:
    """The n × m batch indicator matrix of ``codes`` in Fortran order (float64)."""
    B = np.zeros((codes.size, m), order="F")
    B[np.arange(codes.size), codes] = 1.0
    return B
