"""The per-batch sufficient statistics of ComBat (``featharm._core.suffstats``, ``docs/methods.md`` §1.9):
accumulation over row blocks, merging (order-independent, bit for bit), the array form, and the least
squares from the statistics against a direct computation on the rows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from featharm._core.ols import GramSolver
from featharm._core.suffstats import ARRAYS, SuffStats, frozen_moments, location_fit, total_variance
from featharm.exceptions import InputError, MissingValueError


def make_rows(seed: int = 0, m: int = 4, n: int = 400, p: int = 30, nan_fraction: float = 0.0):
    """Covariates (age, a 0/1 column), batch codes and volume-like features (mean ~1e4, SD ~1e2)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, m, n)
    X = np.column_stack([rng.uniform(20, 85, n), rng.integers(0, 2, n).astype(float)])
    Y = (rng.uniform(5e3, 2e4, p) + X @ rng.normal([[-30], [20]], [[5], [10]], (2, p)) + rng.normal(0, 3, (m, p))[codes] * 50
         + rng.uniform(50, 200, p) * rng.standard_normal((n, p)))
    if nan_fraction:
        M = rng.random((n, p)) < nan_fraction
        M[:, : p // 2] = False
        Y[M] = np.nan
    return X, Y, codes


def pieces_of(X, Y, codes, m, seed, n_pieces=5):
    rng = np.random.default_rng(seed)
    blocks = np.array_split(rng.permutation(len(Y)), n_pieces)
    return [SuffStats(m, X.shape[1], Y.shape[1]).update(X[b], Y[b], codes[b]) for b in blocks]


def same_arrays(a: SuffStats, b: SuffStats) -> bool:
    da, db = a.to_arrays(), b.to_arrays()
    return all(da[k].dtype == db[k].dtype and da[k].shape == db[k].shape and da[k].tobytes() == db[k].tobytes()
               for k in ARRAYS)


@pytest.mark.parametrize("nan_fraction", [0.0, 0.05])
def test_combine_is_order_independent_bit_for_bit(nan_fraction):
    X, Y, codes = make_rows(1, nan_fraction=nan_fraction)
    pieces = pieces_of(X, Y, codes, 4, 0)
    first = SuffStats.combine(pieces)
    for perm in itertools.islice(itertools.permutations(range(len(pieces))), 1, 40, 7):
        assert same_arrays(SuffStats.combine([pieces[i] for i in perm]), first)
    a, b = pieces[0], pieces[1]
    assert same_arrays(a.merge(b), b.merge(a))


def test_combine_does_not_modify_its_pieces():
    X, Y, codes = make_rows(2, nan_fraction=0.05)
    pieces = pieces_of(X, Y, codes, 4, 1)
    before = [p.to_arrays() for p in pieces]
    SuffStats.combine(pieces)
    for p, d in zip(pieces, before):
        assert all(np.array_equal(p.to_arrays()[k], d[k]) for k in ARRAYS)


@pytest.mark.parametrize("nan_fraction", [0.0, 0.05])
def test_grouping_of_merges_changes_only_rounding(nan_fraction):
    """Associativity to rounding: ((a + b) + c) + ... and a + (b + (c + ...)) give the same fit to 1e-12."""
    X, Y, codes = make_rows(3, nan_fraction=nan_fraction)
    p = pieces_of(X, Y, codes, 4, 2, n_pieces=4)
    left = SuffStats.combine([SuffStats.combine([SuffStats.combine([p[0], p[1]]), p[2]]), p[3]])
    right = SuffStats.combine([p[0], SuffStats.combine([p[1], SuffStats.combine([p[2], p[3]])])])
    fl, fr = location_fit(left, np.eye(4)), location_fit(right, np.eye(4))
    for a, b in ((fl.coef, fr.coef), (fl.ss, fr.ss)):
        assert np.nanmax(np.abs(a - b) / np.nanmax(np.abs(b), axis=0)) < 1e-12
    assert np.array_equal(left.n_obs, right.n_obs) and np.array_equal(left.counts, right.counts)


def test_least_squares_from_statistics_equal_the_normal_equations():
    """Complete data: the coefficients and per-batch residual sums of squares equal those computed from the rows
    (GramSolver on [B | X], residuals squared and summed per batch), to 1e-12 relative; with a reference batch the
    batch coefficients are in its coding (row r = b_r, others b_i - b_r)."""
    m = 5
    X, Y, codes = make_rows(4, m=m)
    stats = SuffStats.combine(pieces_of(X, Y, codes, m, 3))
    for ref in (None, 2):
        rows = np.eye(m)
        if ref is not None:
            rows[:, ref] = 1.0
        W = np.hstack([rows[codes], X])
        coef = GramSolver(W).solve(Y)
        R = Y - W @ coef
        ss = np.stack([(R[codes == i] ** 2).sum(axis=0) for i in range(m)])
        fit = location_fit(stats, rows)
        assert np.abs(fit.coef - coef).max() / np.abs(coef).max() < 1e-12
        assert np.abs(fit.coef[m:] - coef[m:]).max() / np.abs(coef[m:]).max() < 1e-12
        assert np.abs(fit.ss - ss).max() / ss.max() < 1e-12
    # total variance of every feature
    assert np.allclose(total_variance(stats), Y.var(axis=0), rtol=1e-12, atol=0)


def test_missing_values_per_feature_least_squares():
    """NaN cells: each feature's least squares on its own observed rows, equal to a direct per-feature fit."""
    m = 4
    X, Y, codes = make_rows(5, m=m, nan_fraction=0.08)
    stats = SuffStats.combine(pieces_of(X, Y, codes, m, 4))
    assert stats.has_missing and stats.miss_key.size > 0
    fit = location_fit(stats, np.eye(m))
    W = np.hstack([np.eye(m)[codes], X])
    for v in range(Y.shape[1]):
        obs = ~np.isnan(Y[:, v])
        coef = np.linalg.lstsq(W[obs], Y[obs, v], rcond=None)[0]
        r = Y[obs, v] - W[obs] @ coef
        ss = np.bincount(codes[obs], weights=r * r, minlength=m)
        assert np.abs(fit.coef[:, v] - coef).max() / np.abs(coef).max() < 1e-12, v
        assert np.abs(fit.ss[:, v] - ss).max() / ss.max() < 1e-11, v
        assert np.array_equal(fit.n_obs[:, v], np.bincount(codes[obs], minlength=m))
    var = np.nanvar(Y, axis=0)
    assert np.allclose(total_variance(stats), var, rtol=1e-12, atol=0)


def test_frozen_moments_equal_the_moments_of_z():
    X, Y, codes = make_rows(6, m=3, nan_fraction=0.05)
    rng = np.random.default_rng(0)
    alpha, beta, sigma = np.nanmean(Y, axis=0), rng.normal(0, 20, (2, Y.shape[1])), np.nanstd(Y, axis=0)
    stats = SuffStats.combine(pieces_of(X, Y, codes, 3, 5))
    gh, d_raw, n = frozen_moments(stats, alpha, beta, sigma)
    Z = (Y - alpha - X @ beta) / sigma
    for i in range(3):
        Zi = Z[codes == i]
        assert np.allclose(gh[i], np.nanmean(Zi, axis=0), rtol=0, atol=1e-12)
        assert np.allclose(d_raw[i], np.nanvar(Zi, axis=0, ddof=1), rtol=1e-11, atol=0)
        assert np.array_equal(n[i], (~np.isnan(Zi)).sum(axis=0))


def test_shifts_keep_sums_small_and_shared_shifts_merge_by_plain_addition():
    X, Y, codes = make_rows(7)
    first = SuffStats(4, 2, Y.shape[1]).update(X[:100], Y[:100], codes[:100])
    # around the shift (means and pilot slopes of the first block) the sums are of the size of the residuals
    assert np.abs(first.sy).max() < 1e-6 * np.abs(Y).max() * 100
    second = SuffStats.empty_like(first).update(X[100:], Y[100:], codes[100:])
    assert np.array_equal(second.x_shift, first.x_shift) and np.array_equal(second.y_slope, first.y_slope)
    both = first.merge(second)
    ordered = sorted([first, second], key=lambda s: -s.counts[0])
    # every batch is the sum of the same two pieces with the same shifts: nothing moved
    for name in ("sx", "sxx", "sy", "sxy", "syy", "n_obs", "counts"):
        assert np.array_equal(getattr(both, name), getattr(ordered[0], name) + getattr(ordered[1], name)) or \
            np.array_equal(getattr(both, name), getattr(ordered[1], name) + getattr(ordered[0], name))


def test_arrays_round_trip_and_checks():
    X, Y, codes = make_rows(8, nan_fraction=0.05)
    stats = SuffStats.combine(pieces_of(X, Y, codes, 4, 6))
    d = stats.to_arrays()
    assert set(d) == set(ARRAYS)
    back = SuffStats.from_arrays(d)
    assert same_arrays(back, stats)
    # continuing to accumulate into the rebuilt object works with its stored shifts
    more = SuffStats.from_arrays(d).update(X[:10], Y[:10], codes[:10])
    assert more.counts.sum() == stats.counts.sum() + 10

    def broken(**change):
        return {**{k: v.copy() for k, v in d.items()}, **change}

    cases = [
        (broken(counts=-d["counts"]), "non-negative whole numbers"),
        (broken(n_obs=d["n_obs"] + 0.5), "non-negative whole numbers"),
        (broken(sy=np.full_like(d["sy"], np.inf)), "'sy' has non-finite"),
        (broken(sxy=d["sxy"][:, :1]), "'sxy' has shape"),
        (broken(syy=d["syy"].astype(np.int64)), "'syy' has dtype"),
        (broken(n_obs=d["n_obs"] + d["counts"][:, None]), "more observed values"),
        (broken(miss_feature=d["miss_feature"][::-1].copy()), "sorted and unique"),
        ({k: v for k, v in d.items() if k != "miss_sx"}, "missing \\['miss_sx'\\]"),
    ]
    for arrays, msg in cases:
        with pytest.raises(InputError, match=msg):
            SuffStats.from_arrays(arrays)


def test_update_checks_its_inputs():
    X, Y, codes = make_rows(9)
    s = SuffStats(4, 2, Y.shape[1])
    with pytest.raises(InputError, match="rows × 30 features"):
        s.update(X, Y[:, :5], codes)
    with pytest.raises(InputError, match="covariate block"):
        s.update(X[:, :1], Y, codes)
    with pytest.raises(InputError, match="batch code 7"):
        s.update(X, Y, np.where(np.arange(len(codes)) == 3, 7, codes))
    with pytest.raises(InputError, match="integers"):
        s.update(X, Y, codes.astype(float))
    Yi = Y.copy()
    Yi[5, 2] = np.inf
    with pytest.raises(MissingValueError, match="feature 2 has an infinite value in row 5"):
        s.update(X, Yi, codes)
    Xn = X.copy()
    Xn[4, 0] = np.nan
    with pytest.raises(MissingValueError, match="row 4"):
        s.update(Xn, Y, codes)
    assert s.counts.sum() == 0  # nothing was added by the refused blocks
    with pytest.raises(InputError, match="different shapes"):
        SuffStats.combine([s, SuffStats(4, 2, 3)])


def test_memory_is_independent_of_the_number_of_rows():
    X, Y, codes = make_rows(10, n=200)
    small = SuffStats(4, 2, Y.shape[1]).update(X, Y, codes)
    X2, Y2, codes2 = make_rows(10, n=4000)
    large = SuffStats(4, 2, Y.shape[1]).update(X2, Y2, codes2)
    assert small.nbytes() == large.nbytes()


def _direct_fit(X, Y, codes, m):
    """Per-feature least squares on the observed rows, and per-batch residual sums of squares."""
    W = np.hstack([np.eye(m)[codes], X])
    coef = np.empty((W.shape[1], Y.shape[1]))
    ss = np.empty((m, Y.shape[1]))
    for v in range(Y.shape[1]):
        obs = ~np.isnan(Y[:, v])
        coef[:, v] = np.linalg.lstsq(W[obs], Y[obs, v], rcond=None)[0]
        r = Y[obs, v] - W[obs] @ coef[:, v]
        ss[:, v] = np.bincount(codes[obs], weights=r * r, minlength=m)
    return coef, ss


def test_shifts_set_late_are_exact():
    """A batch seen before the object had a pilot (a first update too small to fit slopes) is moved onto the pilot
    when it comes; a feature not observed in a batch's first rows gets its shift when it is first observed. Both
    keep the fit equal to the direct one."""
    m = 3
    X, Y, codes = make_rows(11, m=m, n=300)
    Y[:40, 4] = np.nan  # feature 4 first observed after the first block
    s = SuffStats(m, 2, Y.shape[1]).update(X[:4], Y[:4], codes[:4])  # 4 rows: no pilot yet
    assert not s.y_slope.any()
    s.update(X[4:40], Y[4:40], codes[4:40])  # the pilot: earlier batches are moved onto it
    assert all(s.y_slope[i].any() for i in np.unique(codes[:40]))
    assert not s._c_set[:, 4].any()
    s.update(X[40:], Y[40:], codes[40:])
    assert s._c_set[:, 4].all()
    coef, ss = _direct_fit(X, Y, codes, m)
    fit = location_fit(s, np.eye(m))
    assert np.abs(fit.coef - coef).max(axis=0).max() / np.abs(coef).max() < 1e-12
    assert (np.abs(fit.ss - ss).max(axis=0) / ss.max(axis=0)).max() < 1e-11


def test_rebuilt_statistics_keep_accumulating_exactly():
    m = 4
    X, Y, codes = make_rows(12, m=m, n=300, nan_fraction=0.05)
    first = SuffStats(m, 2, Y.shape[1]).update(X[:150], Y[:150], codes[:150])
    again = SuffStats.from_arrays(first.to_arrays()).update(X[150:], Y[150:], codes[150:])
    coef, ss = _direct_fit(X, Y, codes, m)
    fit = location_fit(again, np.eye(m))
    assert np.abs(fit.coef - coef).max() / np.abs(coef).max() < 1e-12
    assert (np.abs(fit.ss - ss).max(axis=0) / ss.max(axis=0)).max() < 1e-11
