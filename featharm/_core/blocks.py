"""Blocks of bounded memory (one place for the block size rule) and the layout of a feature table.

A samples × features table ``Y`` (n × p) is processed in blocks that follow its memory layout, so every
block is contiguous and nothing is copied to another layout:

* column-major (Fortran order, what a pandas DataFrame holds): blocks of features ``Y[:, blk]``;
* row-major (C order, what ``np.loadtxt`` or a row-wise build gives): blocks of rows ``Y[rows]``.

Either way a block holds about :data:`BLOCK_BYTES` of float64 values: small enough that its temporaries
stay in the processor's cache, large enough that the Python overhead per block is negligible.
"""

from __future__ import annotations

import numpy as np

from .parallel import block_workers, run_parallel

__all__ = ["BLOCK_BYTES", "iter_blocks", "column_variance", "row_major", "iter_layout_blocks", "column_range",
           "column_sum", "to_float64", "take_columns",
           "layout_slices", "split", "run_blocks", "crossprod"]

# Bytes of float64 values per block of the data-touching passes (~2 MB): a block and two or three
# temporaries of its size stay in a core's L2/L3 cache, where the element-wise steps run at several times
# the speed of main memory; the data themselves are read and written once.
BLOCK_BYTES = 2 * 2**20


def iter_blocks(p: int, n: int, target_bytes: int = 8 * 2**20):
    """Yield slices of ``range(p)`` so that an ``n × block`` float64 array stays near ``target_bytes``."""
    size = max(1, min(p, target_bytes // max(1, 8 * n)))
    for start in range(0, p, size):
        yield slice(start, min(p, start + size))


def row_major(Y: np.ndarray) -> bool:
    """Whether the rows of ``Y`` (n × p) are contiguous and its columns are not (C order, not Fortran)."""
    if Y.ndim != 2:
        return False
    n, p = Y.shape
    it = Y.itemsize
    col_contig = n <= 1 or Y.strides[0] == it
    row_contig = p <= 1 or Y.strides[1] == it
    return row_contig and not col_contig


def iter_layout_blocks(Y: np.ndarray, target_bytes: int | None = None):
    """Yield ``(axis, slice)`` blocks of ``Y`` following its layout: ``(0, rows)`` for a row-major table
    (blocks of rows), ``(1, cols)`` otherwise (blocks of features). ``Y[rows]`` / ``Y[:, cols]`` is the block."""
    n, p = Y.shape
    target_bytes = BLOCK_BYTES if target_bytes is None else target_bytes
    if row_major(Y):
        for rows in iter_blocks(n, p, target_bytes):
            yield 0, rows
    else:
        for cols in iter_blocks(p, n, target_bytes):
            yield 1, cols


def to_float64(block: np.ndarray, buf: np.ndarray | None = None) -> np.ndarray:
    """``block`` as float64: itself when it is float64, else converted into ``buf`` (same shape) or a new array."""
    if block.dtype == np.float64:
        return block
    if buf is None:
        return block.astype(np.float64)
    np.copyto(buf, block, casting="unsafe")
    return buf


def block_size(Y: np.ndarray, target_bytes: int | None = None) -> int:
    """Rows (row-major ``Y``) or features (otherwise) per block of about ``target_bytes`` (default
    :data:`BLOCK_BYTES`) of float64."""
    n, p = Y.shape
    target_bytes = BLOCK_BYTES if target_bytes is None else target_bytes
    if row_major(Y):
        return max(1, min(n, target_bytes // max(1, 8 * p)))
    return max(1, min(p, target_bytes // max(1, 8 * n)))


def layout_slices(Y: np.ndarray, target_bytes: int | None = None) -> list[slice]:
    """The blocks of :func:`iter_layout_blocks` as a list of slices (of rows or of features)."""
    n, p = Y.shape
    total = n if row_major(Y) else p
    size = block_size(Y, target_bytes)
    return [slice(start, min(total, start + size)) for start in range(0, total, size)]


def split(items: list, parts: int) -> list[list]:
    """``items`` dealt into ``parts`` lists (interleaved, so that the workers stream through neighbouring
    memory together); no empty list."""
    parts = max(1, min(parts, len(items)))
    return [items[w::parts] for w in range(parts)]


def run_blocks(fn, blocks: list, n_elements: int) -> list:
    """``fn(part)`` for the blocks dealt between :func:`~featharm._core.parallel.block_workers` threads; one result
    per part. Results that depend only on each block's own data are the same for any number of threads."""
    return run_parallel(fn, split(blocks, block_workers(n_elements)))


def crossprod(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A.T @ B`` (k × p) of ``A`` (n × k) and ``B`` (n × p) over a long shared dimension n, the same to the bit
    for any number of threads.

    A multi-threaded BLAS splits such a product along n when the output is thin, so its last bits depend on
    how many threads it runs on (and featharm picks that number from the machine's load). Here ``B`` is cut
    into fixed blocks of columns (one block up to 8 MB, so a small product is the single call ``A.T @ B``),
    each product runs on one BLAS thread, and the blocks are dealt between featharm's threads: the blocks
    depend only on the shapes. (The operands are never swapped: a BLAS rounds ``(B.T @ A).T`` differently.)
    """
    A = np.asarray(A)
    B = np.asarray(B)
    n, p = B.shape
    out = np.empty((p, A.shape[1]), dtype=np.result_type(A, B)).T  # k × p, each block's columns contiguous
    At = A.T

    def part(blocks):
        for cols in blocks:
            out[:, cols] = At @ B[:, cols]

    run_blocks(part, list(iter_blocks(p, n)), n * p)
    return out


def column_range(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest value of every column, in one pass over ``Y`` (either layout, no n × p temporary).

    A column holding NaN gets NaN for both (``np.minimum``/``np.maximum`` propagate NaN), one holding
    ±inf a non-finite bound: a column is finite exactly when both bounds are.
    """
    n, p = Y.shape
    if row_major(Y):
        def part(blocks):
            lo = np.full(p, np.inf)
            hi = np.full(p, -np.inf)
            for rows in blocks:
                blk = Y[rows]
                np.minimum(lo, blk.min(axis=0), out=lo)
                np.maximum(hi, blk.max(axis=0), out=hi)
            return lo, hi

        res = run_blocks(part, layout_slices(Y), Y.size)
        return np.minimum.reduce([r[0] for r in res]), np.maximum.reduce([r[1] for r in res])
    lo, hi = np.empty(p), np.empty(p)

    def cols_part(blocks):
        for cols in blocks:
            blk = Y[:, cols]
            lo[cols] = blk.min(axis=0)
            hi[cols] = blk.max(axis=0)

    run_blocks(cols_part, layout_slices(Y), Y.size)
    return lo, hi


def column_sum(Y: np.ndarray) -> np.ndarray:
    """Sum of every column (float64 accumulation), in one pass over ``Y`` (either layout).

    Used as a finiteness check: a sum that overflows, or meets both +inf and -inf (NaN), issues no
    floating-point warning (the caller names the non-finite values)."""
    n, p = Y.shape
    if row_major(Y):
        def part(blocks):
            out = np.zeros(p)
            with np.errstate(over="ignore", invalid="ignore"):  # (per thread)
                for rows in blocks:
                    out += Y[rows].sum(axis=0, dtype=np.float64)
            return out

        with np.errstate(over="ignore", invalid="ignore"):
            return np.add.reduce(run_blocks(part, layout_slices(Y), Y.size))
    out = np.empty(p)

    def cols_part(blocks):
        with np.errstate(over="ignore", invalid="ignore"):  # (per thread)
            for cols in blocks:
                out[cols] = Y[:, cols].sum(axis=0, dtype=np.float64)

    run_blocks(cols_part, layout_slices(Y), Y.size)
    return out


def column_variance(Y: np.ndarray) -> np.ndarray:
    """Variance (ddof 0) of every column of ``Y``, in blocks of columns (no n × p temporary), in float64."""
    n, p = Y.shape
    out = np.empty(p)
    for blk in iter_blocks(p, n):
        out[blk] = Y[:, blk].var(axis=0, dtype=np.float64)
    return out


def take_columns(Y: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``Y[:, order]`` (a copy) in the layout of ``Y``: whole columns (or rows) are copied, never element by
    element across the other axis."""
    if row_major(Y):
        return np.take(Y, order, axis=1)
    return np.take(Y.T, order, axis=0).T
