"""S1 and the per-batch residual sums of squares in their within-batch form (``featharm._core.ols.within_fit``).

Checked against an iteratively refined least squares of the full design ``[B | X]`` (the exact answer to
~1e-16 relative), in both layouts, float32, with and without a reference batch, with no covariate, with a
NaN column, for several block sizes, and for its fixed summation order (the same bits for any thread count).
"""

from __future__ import annotations

import numpy as np
import pytest

from featharm._core import blocks, ols
from featharm.design import batch_indicators


def _case(n=400, p=37, m=6, q=2, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, m, n)
    codes[:m] = np.arange(m)  # every batch present
    X = np.column_stack([rng.uniform(20, 80, n), rng.integers(0, 2, n).astype(float)][:q]) if q else np.zeros((n, 0))
    shift = rng.normal(size=(m, p))
    Y = scale * (5 + shift[codes] + X @ rng.normal(size=(q, p)) * 0.05 + rng.normal(size=(n, p)))
    return Y, X, codes, m


def _exact(Y, W, codes, m):
    """Least squares of every column on ``W`` by lstsq plus three steps of refinement on long-double residuals,
    and the per-batch residual sums of squares of those residuals."""
    coef = np.linalg.lstsq(W, Y, rcond=None)[0]
    Wl, Yl = W.astype(np.longdouble), Y.astype(np.longdouble)
    for _ in range(3):
        coef = coef + np.linalg.lstsq(W, (Yl - Wl @ coef.astype(np.longdouble)).astype(float), rcond=None)[0]
    R = Yl - Wl @ coef.astype(np.longdouble)
    ss = np.array([(R[codes == i] ** 2).sum(axis=0) for i in range(m)]).astype(float)
    return coef, ss


@pytest.mark.parametrize("ref", [None, 2])
@pytest.mark.parametrize("q", [0, 2])
@pytest.mark.parametrize("layout", ["F", "C"])
def test_equals_the_least_squares_of_the_design(layout, q, ref):
    Y, X, codes, m = _case(q=q, scale=1e3)
    rows = batch_indicators(np.arange(m), m, ref)
    W = np.hstack([batch_indicators(codes, m, ref), X])
    coef, ss = ols.within_fit(np.asarray(Y, order=layout), rows, X, codes)
    exact_coef, exact_ss = _exact(Y, W, codes, m)
    np.testing.assert_allclose(coef, exact_coef, rtol=0, atol=1e-13 * np.abs(exact_coef).max())
    np.testing.assert_allclose(ss, exact_ss, rtol=1e-13)
    # and agrees with the normal equations and residual pass it replaces (to their rounding)
    old = ols.GramSolver(W).solve(Y)
    old_ss = ols.batch_residual_ss(np.asfortranarray(Y), rows @ old[:m], X, old[m:], codes)
    np.testing.assert_allclose(coef, old, rtol=0, atol=1e-11 * np.abs(old).max())
    np.testing.assert_allclose(ss, old_ss, rtol=1e-11)


def test_every_block_size_and_layout_gives_the_same_numbers(monkeypatch):
    Y, X, codes, m = _case()
    rows = batch_indicators(np.arange(m), m)
    expect = ols.within_fit(np.asfortranarray(Y), rows, X, codes)
    for size in (8 * 400, 8 * 400 * 7, 8 * 37 * 11):  # one feature, 7 features, rows of 11 (row-major)
        monkeypatch.setattr(ols, "BLOCK_BYTES", size)
        monkeypatch.setattr(blocks, "BLOCK_BYTES", size)
        for layout in ("F", "C"):
            coef, ss = ols.within_fit(np.asarray(Y, order=layout), rows, X, codes)
            np.testing.assert_allclose(coef, expect[0], rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(ss, expect[1], rtol=1e-13)


@pytest.mark.parametrize("layout", ["F", "C"])
def test_the_same_bits_for_one_or_two_threads(monkeypatch, layout):
    Y, X, codes, m = _case(n=600, p=90, m=9)
    A = np.asarray(Y, order=layout)
    rows = batch_indicators(np.arange(m), m)
    out = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("FEATHARM_THREADS", threads)
        out.append(ols.within_fit(A, rows, X, codes))
    for coef, ss in out[1:]:
        assert np.array_equal(coef, out[0][0]) and np.array_equal(ss, out[0][1])


def test_a_row_major_table_with_many_cross_products_adds_them_in_one_thread(monkeypatch):
    # X_c'Y kept per batch (m × q × p values) unless that is large: then one accumulator, in batch order
    Y, X, codes, m = _case(n=600, p=90, m=9)
    A = np.ascontiguousarray(Y)
    rows = batch_indicators(np.arange(m), m)
    apart = ols.within_fit(A, rows, X, codes)
    monkeypatch.setattr(ols, "CROSS_BYTES", 0)
    monkeypatch.setattr(ols.np, "zeros", _recording(ols.np.zeros, shapes := []))
    outs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("FEATHARM_THREADS", threads)
        outs.append(ols.within_fit(A, rows, X, codes))
    assert (1, 2, 90) in shapes and (m, 2, 90) not in shapes  # one accumulator, not one per batch
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    np.testing.assert_allclose(outs[0][0], apart[0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(outs[0][1], apart[1], rtol=1e-13)


def _recording(zeros, shapes):
    def wrapped(shape, *args, **kwargs):
        shapes.append(tuple(shape) if isinstance(shape, tuple) else (shape,))
        return zeros(shape, *args, **kwargs)
    return wrapped


@pytest.mark.parametrize("layout", ["F", "C"])
def test_float32_is_read_in_float64(layout):
    Y, X, codes, m = _case()
    Y32 = np.asarray(Y.astype(np.float32), order=layout)
    rows = batch_indicators(np.arange(m), m)
    coef, ss = ols.within_fit(Y32, rows, X, codes)
    coef64, ss64 = ols.within_fit(np.asfortranarray(Y32.astype(np.float64)), rows, X, codes)
    np.testing.assert_allclose(coef, coef64, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ss, ss64, rtol=1e-13)


@pytest.mark.parametrize("layout", ["F", "C"])
def test_a_nan_column_gives_nan_in_its_own_column_only(layout):
    Y, X, codes, m = _case()
    rows = batch_indicators(np.arange(m), m)
    clean = ols.within_fit(np.asfortranarray(Y), rows, X, codes)
    Y[5, 3] = np.nan
    with np.errstate(invalid="ignore"):
        coef, ss = ols.within_fit(np.asarray(Y, order=layout), rows, X, codes)
    assert np.isnan(coef[:, 3]).all() and np.isnan(ss[:, 3]).all()
    keep = np.arange(Y.shape[1]) != 3
    assert np.isfinite(coef[:, keep]).all()
    np.testing.assert_allclose(coef[:, keep], clean[0][:, keep], rtol=1e-13, atol=1e-13)


def test_refuses_covariates_that_are_constant_within_batches():
    # centred within batches such a covariate is all zeros: the caller falls back to the normal equations
    Y, _, codes, m = _case()
    X = np.column_stack([codes * 2.0 + 1])
    assert ols.within_fit(Y, batch_indicators(np.arange(m), m), X, codes) is None
    assert ols.within_fit(Y, batch_indicators(np.arange(m + 1), m + 1), np.zeros((Y.shape[0], 0)), codes) is None
