"""The vectorized Anderson–Darling k-sample test and the two-component mixtures of ``featharm._core``.

Oracle for the AD test: ``scipy.stats.anderson_ksamp(variant="midrank")`` called on one feature at a time
(the statistic to 1e-12 relative, the interpolated p-value to 1e-9 relative, and the same verdict at
p < 0.05 for every feature). Oracle for the mixture: data drawn from a known two-component mixture.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import anderson_ksamp

from featharm._core.ad import P_CAP, P_FLOOR, ad_ksamp
from featharm._core.gmm import gmm_fit, gmm_predict


def scipy_ad(y, codes, k):
    """scipy's test of one feature on its observed values (None where scipy refuses)."""
    keep = ~np.isnan(y)
    y, c = y[keep], codes[keep]
    groups = [y[c == i] for i in range(k) if (c == i).any()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "p-value floored/capped"
        try:
            return anderson_ksamp(groups, variant="midrank")
        except ValueError:
            return None


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("missing", [False, True])
def test_ad_matches_scipy_feature_by_feature(ties, missing):
    rng = np.random.default_rng(7)
    checked = floored = capped = 0
    for trial in range(40):
        n, k, p = int(rng.integers(8, 80)), int(rng.integers(2, 6)), 12
        codes = rng.integers(0, k, n)
        codes[:k] = np.arange(k)
        shift = rng.uniform(0, 1.5, p)  # from no batch effect to a large one: every p-value branch
        Y = rng.normal(size=(n, p)) + codes[:, None] * shift
        if ties:
            Y = np.round(Y, 1)
        if missing:
            Y[rng.random((n, p)) < 0.15] = np.nan
        stat, pval = ad_ksamp(Y, codes, k)
        for j in range(p):
            ref = scipy_ad(Y[:, j], codes, k)
            if ref is None:
                assert np.isnan(stat[j]) and np.isnan(pval[j])
                continue
            checked += 1
            floored += ref.pvalue == P_FLOOR
            capped += ref.pvalue == P_CAP
            assert stat[j] == pytest.approx(ref.statistic, rel=1e-12, abs=1e-12)
            assert pval[j] == pytest.approx(ref.pvalue, rel=1e-9)
            assert (pval[j] < 0.05) == (ref.pvalue < 0.05)
    assert checked > 400 and floored > 20 and capped > 20  # the floor, the cap and the interpolation were met


def test_ad_undefined_cases_are_nan_not_errors():
    codes = np.array([0, 0, 0, 1, 1, 1])
    Y = np.column_stack([np.ones(6),                        # one distinct value
                         [1, 2, 3, np.nan, np.nan, np.nan],  # one group observed
                         [1, 2, np.nan, np.nan, np.nan, 3],  # 3 values: variance undefined
                         [1, 2, 3, 4, 5, 6.0]])              # a regular test
    stat, pval = ad_ksamp(Y, codes, 2)
    assert np.isnan(stat[:3]).all() and np.isnan(pval[:3]).all()
    ref = scipy_ad(Y[:, 3], codes, 2)
    assert stat[3] == pytest.approx(ref.statistic) and pval[3] == pytest.approx(ref.pvalue)


def test_ad_empty_group_is_left_out():
    """A level without rows (or without observed values of a feature) does not count as a group."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2, 50) * 2  # levels 0 and 2; level 1 empty
    Y = rng.normal(size=(50, 4)) + codes[:, None]
    stat, pval = ad_ksamp(Y, codes, 3)
    for j in range(4):
        ref = scipy_ad(Y[:, j], codes, 3)
        assert stat[j] == pytest.approx(ref.statistic) and pval[j] == pytest.approx(ref.pvalue)


def test_ad_does_not_depend_on_row_or_level_order():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 3, 90)
    Y = rng.normal(size=(90, 5)) + 0.3 * codes[:, None]
    rows = rng.permutation(90)
    relabel = np.array([2, 0, 1])[codes]
    a = ad_ksamp(Y, codes, 3)
    b = ad_ksamp(Y[rows], relabel[rows], 3)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)


# ------------------------------------------------------------------------------------------ mixtures
def bimodal(n=400, p=6, seed=0, share=0.4):
    rng = np.random.default_rng(seed)
    z = (rng.random(n) < share).astype(int)  # the hidden group
    Y = rng.normal(size=(n, p))
    Y[:, 2] = np.where(z == 1, 4.0, 0.0) + rng.normal(0, 0.7, n)  # one clearly bimodal feature
    Y[:, 4] = 1000 + 50 * Y[:, 4]  # another unit: the AIC is compared on standardized features
    return Y, z


def test_gmm_finds_the_bimodal_feature_and_its_groups():
    Y, z = bimodal()
    res = gmm_fit(Y, random_state=0)
    assert res["feature"] == 2
    assert (res["labels"] == z).mean() > 0.99  # component 0 is the lower mode, as z = 0
    assert res["minor_share"] == pytest.approx(min(z.mean(), 1 - z.mean()), abs=0.02)
    # the stored mixture labels the rows as the fit did
    zs = (Y[:, 2] - res["center"]) / res["scale"]
    np.testing.assert_array_equal(gmm_predict(zs, res["weights"], res["means"], res["sds"]), res["labels"])
    assert res["means"][0] < res["means"][1] and sum(res["weights"]) == pytest.approx(1.0)


def test_gmm_is_reproducible_and_refuses_unbalanced_splits():
    Y, _ = bimodal(seed=3)
    a, b = gmm_fit(Y, random_state=11), gmm_fit(Y, random_state=11)
    assert a["feature"] == b["feature"] and a["aic"] == b["aic"] and a["means"] == b["means"]
    Y1, _ = bimodal(seed=3, share=0.1)  # the only bimodal feature splits 10 % / 90 %
    Y1 = Y1[:, [2]]
    assert gmm_fit(Y1, random_state=0) is None
    # constant features and features with NaN are not used
    Yc = np.column_stack([np.ones(100), np.r_[np.nan, np.arange(99.0)]])
    assert gmm_fit(Yc, random_state=0) is None
