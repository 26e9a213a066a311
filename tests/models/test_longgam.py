"""Longitudinal ComBat-GAM (featharm.LongComBatGAM) and its core (featharm._core.smooth_mixed).

Checks, with the tolerances they hold to:

* the REML profile's analytic derivative in ``log rho`` against central finite differences (1e-6 relative);
* the limiting cases: no smooth term = LongComBat (LongComBat's golden section locates ``rho`` to ~1e-8
  relative, so outputs agree to 1e-6 SD); one scan per subject = ComBatGAM with REML (subject variance
  set to 0; with ``standardize="msr"`` the same ``sigma`` as ComBat, so the outputs agree to 1e-5 SD, the
  difference coming from features whose smoothing parameter sits at the end of either grid, a linear fit);
* features fitted together = each feature fitted alone (vectorization, 1e-9);
* the simulated lifespan study with follow-up scans (``datasets.make_lifespan``): the harmonized values are
  closer to the truth (RMSE / sigma) than with LongComBat (linear age) or ComBatGAM (independent scans),
  and the curvature of the age effect is kept better than by LongComBat;
* the life cycle: new scans of known and new subjects, new sites, out-of-range ages, save/load, NaN cells.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm import ComBatGAM, LongComBat, LongComBatGAM
from featharm._core import penalized, smooth_mixed
from featharm._core.splines import SplineBasis
from featharm.datasets import make_lifespan, make_longitudinal
from featharm.exceptions import OutOfRangeError, SingleScanWarning


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


@pytest.fixture(scope="module")
def life():
    sim = make_lifespan(n_subjects=300, n_features=10, random_state=5)
    return sim


@pytest.fixture(scope="module")
def fitted(life):
    hm = LongComBatGAM(subject="subject", formula="sex", smooth="age")
    Xh = quiet(hm.fit_transform, life.X, life.covariates)
    return hm, Xh


# ------------------------------------------------------------------------------------------ core numerics
def _core_inputs(sim):
    cov = sim.covariates
    B = np.eye(4)[np.unique(cov["site"], return_inverse=True)[1]]
    Wfix = np.column_stack([B, (cov["sex"] == "M").to_numpy(float)])
    basis = SplineBasis.from_data(cov["age"].to_numpy(), "age")
    Z = basis.transform(cov["age"].to_numpy())
    g = np.unique(cov["subject"], return_inverse=True)[1]
    return sim.X.to_numpy(), Wfix, Z, [basis.penalty()], g


def _stats(Y, Wfix, Z, pen, g, mask=None):
    Z0, Zp, _, _ = penalized.penalty_reparam(Z, pen)
    Wu = np.hstack([Wfix, Z0])
    Q, _, _ = penalized._unpenalized_qr(Wu)
    M = np.hstack([Q, Zp])
    if mask is None:
        return smooth_mixed._Stats(M, Y, g, g.max() + 1, Wu.shape[1])
    return smooth_mixed._MaskedStats(M, Y, ~mask, g, g.max() + 1, Wu.shape[1])


@pytest.mark.parametrize("masked", [False, True])
def test_profile_derivative_matches_finite_differences(life, masked):
    Y, Wfix, Z, pen, g = _core_inputs(life)
    mask = np.random.default_rng(3).random(Y.shape) < 0.1 if masked else None
    st = _stats(Y, Wfix, Z, pen, g, mask)
    grid = np.linspace(-10, 30, 97)
    f = np.arange(Y.shape[1])
    for t in (-2.0, 0.0, 1.5):
        rho, e = np.full(Y.shape[1], np.exp(t)), 1e-5
        num = (smooth_mixed._profile(st, rho * np.exp(e), f, grid)[0]
               - smooth_mixed._profile(st, rho * np.exp(-e), f, grid)[0]) / (2 * e)
        ana = smooth_mixed._slope_log_rho(st, rho, f, grid)
        np.testing.assert_allclose(ana, num, rtol=1e-6, atol=1e-6)


def test_masked_statistics_equal_the_fit_on_observed_rows(life):
    """The per-feature sums of the missing-value path give each feature the fit of its observed rows alone
    (the same REML optimum: only the frozen design's parametrization differs)."""
    Y, Wfix, Z, pen, g = _core_inputs(life)
    mask = np.random.default_rng(4).random(Y.shape) < 0.1
    fit = smooth_mixed.fit_smooth_mixed_observed(Y, mask, Wfix, Z, pen, g, droppable=4)
    interior = 0
    for j in range(Y.shape[1]):
        rows = ~mask[:, j]
        ref = smooth_mixed.fit_smooth_mixed(Y[rows][:, [j]], Wfix[rows], Z[rows], pen, g[rows], n_groups=g.max() + 1)
        for name in ("coef", "sigma2", "tau2", "edf", "blup", "loglik"):
            np.testing.assert_allclose(getattr(fit, name)[..., j], getattr(ref, name)[..., 0], rtol=1e-6,
                                       atol=1e-9, err_msg=name)
        if ref.smoothing[0] < 1e8:  # an interior REML minimum (else a linear fit at either grid's end)
            interior += 1
            np.testing.assert_allclose(fit.smoothing[j], ref.smoothing[0], rtol=1e-7)
        else:
            assert fit.smoothing[j] > 1e9
    assert interior >= 3


def test_reml_optimum_is_stationary_and_beats_neighbours(life):
    """At the estimate the profile's derivative vanishes and moving either ratio raises the criterion."""
    Y, Wfix, Z, pen, g = _core_inputs(life)
    fit = smooth_mixed.fit_smooth_mixed(Y, Wfix, Z, pen, g)
    rho = fit.tau2 / fit.sigma2
    assert (rho > 0.5).all() and np.isfinite(fit.loglik).all()
    st = _stats(Y, Wfix, Z, pen, g)
    grid = np.linspace(-10, 30, 97)
    f = np.arange(Y.shape[1])
    best = smooth_mixed._profile(st, rho, f, grid)[0]
    for step in (np.exp(0.01), np.exp(-0.01)):
        assert (smooth_mixed._profile(st, rho * step, f, grid)[0] > best).all()
    assert np.abs(smooth_mixed._slope_log_rho(st, rho, f, grid)).max() < 1e-6


def test_features_fitted_together_equal_each_alone(life):
    Y, Wfix, Z, pen, g = _core_inputs(life)
    together = smooth_mixed.fit_smooth_mixed(Y, Wfix, Z, pen, g)
    for j in (0, 3, 7):
        alone = smooth_mixed.fit_smooth_mixed(Y[:, [j]], Wfix, Z, pen, g)
        for name in ("coef", "sigma2", "tau2", "smoothing", "edf", "blup", "loglik"):
            np.testing.assert_allclose(getattr(alone, name)[..., 0], getattr(together, name)[..., j],
                                       rtol=1e-9, atol=1e-12, err_msg=name)


def test_affine_equivariance(life):
    """Changing a feature's units and origin rescales its coefficients; the variance ratios do not move."""
    Y, Wfix, Z, pen, g = _core_inputs(life)
    a, b = np.linspace(0.5, 2000.0, Y.shape[1]), np.linspace(-5.0, 1e4, Y.shape[1])
    f1 = smooth_mixed.fit_smooth_mixed(Y, Wfix, Z, pen, g)
    f2 = smooth_mixed.fit_smooth_mixed(Y * a + b, Wfix, Z, pen, g)
    np.testing.assert_allclose(f2.tau2 / f2.sigma2, f1.tau2 / f1.sigma2, rtol=1e-7)
    np.testing.assert_allclose(f2.smoothing, f1.smoothing, rtol=1e-7)
    np.testing.assert_allclose(f2.coef[4:], f1.coef[4:] * a, rtol=1e-6, atol=1e-9 * a.max())
    np.testing.assert_allclose(f2.blup, f1.blup * a, rtol=1e-6, atol=1e-8 * a.max())


# ------------------------------------------------------------------------------------------ limiting cases
@pytest.mark.parametrize("standardize", ["reml", "msr", "marginal"])
def test_without_smooth_term_equals_longcombat(standardize):
    sim = make_longitudinal(n_subjects=150, n_sites=3, n_features=8, random_state=2)
    X, cov = sim.X, sim.covariates
    a = LongComBat(subject="subject", formula="age + sex + time", standardize=standardize).fit(X, cov)
    b = LongComBatGAM(subject="subject", formula="age + sex + time", standardize=standardize).fit(X, cov)
    assert b.smooth_terms_ == [] and b.spline_coef_.shape == (0, 8)
    sd = X.std().to_numpy()
    np.testing.assert_allclose(b.transform(X, cov).to_numpy(), a.transform(X, cov).to_numpy(), rtol=0,
                               atol=1e-6 * sd.min())
    np.testing.assert_allclose(b.ranef_var_, a.ranef_var_, rtol=1e-6)
    np.testing.assert_allclose(b.residual_var_, a.residual_var_, rtol=1e-7)
    np.testing.assert_allclose(b.loglik_, a.loglik_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.beta_, a.beta_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b.random_effects_, a.random_effects_, rtol=0, atol=1e-6 * sd.min())
    np.testing.assert_allclose(b.gamma_star_, a.gamma_star_, rtol=0, atol=1e-6)


def test_one_scan_per_subject_equals_combatgam():
    sim = make_lifespan(n_subjects=500, n_features=8, visits=(1,), random_state=1)
    X, cov = sim.X, sim.covariates
    sd = X.std().to_numpy()
    with pytest.warns(SingleScanWarning, match="single scan.*set to 0"):
        a = LongComBatGAM(subject="subject", formula="sex", smooth="age", standardize="msr").fit(X, cov)
    b = ComBatGAM(formula="sex", smooth="age", method="REML").fit(X, cov)
    assert (a.ranef_var_ == 0).all() and (a.random_effects_.to_numpy() == 0).all()
    assert a.singular_features_ == []  # not a singular fit: the subject variance is not identified
    # the same smoothing parameter where the REML minimum is interior (elsewhere a linear fit at the grid end)
    inner = (b.lambda_ < 1e8).to_numpy()
    assert inner.sum() >= 2
    np.testing.assert_allclose(a.lambda_[inner], b.lambda_[inner], rtol=1e-8)
    np.testing.assert_allclose(a.edf_, b.edf_, rtol=0, atol=1e-4)
    np.testing.assert_allclose(a.sigma_, b.sigma_, rtol=1e-6)
    np.testing.assert_allclose(a.transform(X, cov).to_numpy(), b.transform(X, cov).to_numpy(), rtol=0,
                               atol=1e-5 * sd.min())
    # with the REML residual SD (longCombat's default) the output's residual scale is sigma_REML, not ComBat's
    c = quiet(LongComBatGAM(subject="subject", formula="sex", smooth="age").fit, X, cov)
    ratio = (c.sigma_ / b.sigma_).to_numpy()
    assert (ratio > 1.0).all() and (ratio < 1.02).all()


# ------------------------------------------------------------------------------------------ simulated truth
def _curvature(Y: pd.DataFrame, cov: pd.DataFrame) -> np.ndarray:
    a = (cov["age"].to_numpy() - 50.0) / 20.0
    W = np.column_stack([np.ones(len(a)), a, a**2, a**3, a**4, cov["sex"] == "M"])
    return np.linalg.lstsq(W, Y.to_numpy(), rcond=None)[0][2:5]


def lifespan_scores(sim, Xh) -> tuple[float, float]:
    """RMSE to the truth in units of the within-subject noise SD, and the share of the true curvature kept
    (the quadratic-to-quartic age coefficients of the harmonized data regressed on the truth's)."""
    rmse = float(np.sqrt(((Xh - sim.truth) ** 2).mean()).mean() / sim.sigma)
    ct, ch = _curvature(sim.truth, sim.covariates), _curvature(Xh, sim.covariates)
    return rmse, float(np.sum(ch * ct) / np.sum(ct * ct))


@pytest.mark.parametrize("seed", [3, 4])
def test_lifespan_truth_recovered_better_than_either_alone(seed):
    sim = make_lifespan(n_subjects=500, n_features=16, random_state=seed)
    X, cov = sim.X, sim.covariates
    scores = {}
    for st in ("reml", "msr"):
        scores["lgam", st] = lifespan_scores(sim, quiet(LongComBatGAM(subject="subject", formula="sex", smooth="age",
                                                                      standardize=st).fit_transform, X, cov))
        scores["long", st] = lifespan_scores(sim, quiet(LongComBat(subject="subject", formula="age + sex",
                                                                   standardize=st).fit_transform, X, cov))
    gam = lifespan_scores(sim, quiet(ComBatGAM(formula="sex", smooth="age").fit_transform, X, cov))
    raw = lifespan_scores(sim, X)
    for st in ("reml", "msr"):
        rmse, kept = scores["lgam", st]
        assert rmse < scores["long", st][0] and rmse < gam[0] and rmse < 0.6 * raw[0], (st, scores, gam)
        assert abs(kept - 1.0) < abs(scores["long", st][1] - 1.0), (st, scores)
        assert abs(kept - 1.0) < 0.2
    assert scores["lgam", "msr"][0] < 0.9 * gam[0]


def test_recovers_the_true_variance_ratio_and_curve(life, fitted):
    hm, _ = fitted
    icc = hm.icc_.to_numpy()
    assert abs(icc.mean() - life.icc) < 0.05
    # the fitted curve follows the true one (up to a constant and the linear part the formula shares)
    ages = np.linspace(20, 80, 61)
    f = hm.smooth_effect("age", ages).to_numpy()
    from featharm.datasets._simulate_long import lifespan_shape
    # the true curve's coefficients are not exposed: regress the fitted curve on the true shapes
    T = np.column_stack([np.ones_like(ages), ages, lifespan_shape(ages)])
    fitted_curve = T @ np.linalg.lstsq(T, f, rcond=None)[0]
    resid = np.sqrt(((f - fitted_curve) ** 2).mean(axis=0))
    assert (resid < 0.1 * life.sigma).all()


# ------------------------------------------------------------------------------------------ life cycle
def test_transform_reproduces_training_rows(life, fitted):
    hm, Xh = fitted
    np.testing.assert_allclose(hm.transform(life.X, life.covariates).to_numpy(), Xh.to_numpy(), rtol=0, atol=1e-12)


def test_new_scans_known_and_new_subjects(life, fitted):
    """A known subject's new scan keeps its BLUP and the curve at its new age; a new subject is harmonized at
    the population level (u = 0)."""
    hm, _ = fitted
    X, cov = life.X, life.covariates
    row = cov.index[0]
    subj = cov.loc[row, "subject"]
    newcov = cov.loc[[row, row]].copy()
    newcov.index = ["new_scan_known", "new_scan_unknown"]
    newcov["subject"] = [subj, "never_seen"]
    newcov["age"] = newcov["age"] + 1.5
    newX = X.loc[[row, row]].set_axis(newcov.index)
    out = hm.transform(newX, newcov)
    a = hm._arr
    b = list(hm.batches_).index(newcov.iloc[0]["site"])
    xrow = hm.design_.transform(newcov.iloc[[0]])[0]
    zrow = hm.smooth_bases_[0].transform(newcov["age"].to_numpy()[:1])[0]
    fixed = a["alpha"] + xrow @ a["beta"] + zrow @ a["spline_coef"]
    x = newX.iloc[0].to_numpy()
    for k, u in ((0, hm.random_effects_.loc[subj].to_numpy()), (1, 0.0)):
        z = (x - fixed - u) / a["sigma"]
        expect = a["sigma"] * (z - a["gamma_star"][b]) / np.sqrt(a["delta_star"][b]) + fixed + u
        np.testing.assert_allclose(out.iloc[k].to_numpy(), expect, rtol=1e-12)
    assert not np.allclose(out.iloc[0], out.iloc[1])


def test_out_of_range_ages_and_extrapolation(life, fitted):
    hm, _ = fitted
    X, cov = life.X.iloc[:3], life.covariates.iloc[:3].copy()
    cov.iloc[1, cov.columns.get_loc("age")] = 130.0
    with pytest.raises(OutOfRangeError, match=r"'age'.*130"):
        hm.transform(X, cov)
    hm.set_params(extrapolate="linear")
    try:
        out = hm.transform(X, cov)
        assert np.isfinite(out.to_numpy()).all()
        np.testing.assert_array_equal(out.iloc[[0, 2]].to_numpy(), hm.transform(X.iloc[[0, 2]], cov.iloc[[0, 2]]))
    finally:
        hm.set_params(extrapolate=None)


def test_smooth_bounds_widen_the_basis(life):
    hm = quiet(LongComBatGAM(subject="subject", formula="sex", smooth="age", smooth_bounds={"age": (0, 120)},
                             eb=False).fit, life.X, life.covariates)
    assert hm.smooth_bases_[0].bounds == (0.0, 120.0)
    cov = life.covariates.iloc[:2].copy()
    cov["age"] = [1.0, 110.0]
    assert np.isfinite(hm.transform(life.X.iloc[:2], cov).to_numpy()).all()


def test_formula_smooth_terms_and_errors(life):
    X, cov = life.X, life.covariates
    a = quiet(LongComBatGAM(subject="subject", formula="sex + s(age)").fit_transform, X, cov)
    b = quiet(LongComBatGAM(subject="subject", formula="sex", smooth=["age"]).fit_transform, X, cov)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    with pytest.raises(fh.exceptions.FormulaError, match="both as smooth terms and in the linear formula"):
        LongComBatGAM(subject="subject", formula="age + sex", smooth="age").fit(X, cov)
    with pytest.raises(fh.exceptions.FormulaError, match="subject column 'subject' cannot be a smooth term"):
        LongComBatGAM(subject="subject", smooth="subject").fit(X, cov)
    with pytest.raises(fh.exceptions.InputError, match="'age_years'"):
        LongComBatGAM(subject="subject", smooth="age_years").fit(X, cov)


def test_new_sites_estimate_relabelled_site(life, fitted):
    """A fitted site relabelled as new, its subjects known: the frozen model (curves, BLUPs, sigma) gives the
    same standardized values, and the EB priors are per site across features, so it comes out as at fit."""
    hm, Xh = fitted
    X, cov = life.X, life.covariates.copy()
    rows = (cov["site"] == "site02").to_numpy()
    cov.loc[rows, "site"] = "scanner_new"
    out = hm.transform(X, cov, new_sites="estimate")
    np.testing.assert_array_equal(out[~rows].to_numpy(), Xh[~rows].to_numpy())
    np.testing.assert_allclose(out[rows].to_numpy(), Xh[rows].to_numpy(), rtol=0, atol=1e-10 * life.sigma)
    assert list(hm.batches_) == ["site01", "site02", "site03", "site04"]  # the model is not changed


def test_save_load_round_trip(life, fitted, tmp_path):
    hm, Xh = fitted
    hm.save(tmp_path / "m.fhm")
    loaded = fh.load_model(tmp_path / "m.fhm")
    assert type(loaded) is LongComBatGAM and loaded.smooth_terms_ == ["age"]
    pd.testing.assert_frame_equal(loaded.transform(life.X, life.covariates), Xh, check_exact=True)
    pd.testing.assert_series_equal(loaded.lambda_, hm.lambda_)
    pd.testing.assert_frame_equal(loaded.random_effects_, hm.random_effects_)
    # without a smooth term too
    sim = make_longitudinal(n_subjects=60, n_sites=3, n_features=4, random_state=0)
    m = LongComBatGAM(subject="subject", formula="age").fit(sim.X, sim.covariates)
    m.save(tmp_path / "n.fhm")
    pd.testing.assert_frame_equal(fh.load_model(tmp_path / "n.fhm").transform(sim.X, sim.covariates),
                                  m.transform(sim.X, sim.covariates), check_exact=True)


def test_missing_values_available_case(life):
    X = life.X.copy()
    cov = life.covariates
    rng = np.random.default_rng(0)
    holes = rng.random(len(X)) < 0.1
    X.loc[holes, "roi002"] = np.nan
    X.loc[holes, "roi005"] = np.nan  # the same pattern: fitted together
    X.iloc[:7, 7] = np.nan
    hm = LongComBatGAM(subject="subject", formula="sex", smooth="age", eb=False)
    out = quiet(hm.fit_transform, X, cov)
    assert np.array_equal(np.isnan(out.to_numpy()), np.isnan(X.to_numpy()))  # NaN in, NaN out
    full = quiet(LongComBatGAM(subject="subject", formula="sex", smooth="age", eb=False).fit_transform, life.X, cov)
    clean = [c for c in X.columns if not X[c].isna().any()]
    pd.testing.assert_frame_equal(out[clean], full[clean], check_exact=True)  # eb=False: per feature
    # a feature with holes: its mixed model is the complete-data fit of its observed scans
    obs = ~holes
    Y, Wfix, Z, pen, g = _core_inputs(life)
    ref = smooth_mixed.fit_smooth_mixed(Y[obs][:, [2]], Wfix[obs], Z[obs], pen, g[obs], n_groups=g.max() + 1)
    np.testing.assert_allclose(hm.ranef_var_["roi002"], ref.tau2[0], rtol=1e-9)
    if ref.smoothing[0] < 1e8:  # an interior minimum (else a linear fit at the end of either grid)
        np.testing.assert_allclose(hm.lambda_["roi002"], ref.smoothing[0], rtol=1e-9)
    else:
        assert hm.lambda_["roi002"] > 1e9
    np.testing.assert_allclose(hm.edf_["roi002"], ref.edf[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(hm.spline_coef_["roi002"], ref.coef[5:, 0], rtol=1e-6, atol=1e-9)
    assert hm.n_obs_["roi002"].sum() == obs.sum()


def test_single_scan_subjects_are_allowed_but_warned(life):
    """Some subjects with one scan (as in any follow-up study): fitted, with LongComBat's warning."""
    sim = make_lifespan(n_subjects=120, n_features=6, visits=(1, 3), random_state=8)
    with pytest.warns(SingleScanWarning, match="single scan"):
        hm = LongComBatGAM(subject="subject", formula="sex", smooth="age").fit(sim.X, sim.covariates)
    assert (hm.ranef_var_ > 0).all()


def test_scattered_missing_cells_close_to_complete_fit(life):
    """5 % of the cells missing at random (every feature its own pattern, fitted together from per-feature
    sums): NaN in, NaN out, and about as close to the truth as the complete-data fit."""
    X, cov = life.X, life.covariates
    mask = np.random.default_rng(7).random(X.shape) < 0.05
    Xn = X.mask(mask)
    out = quiet(LongComBatGAM(subject="subject", formula="sex", smooth="age").fit_transform, Xn, cov)
    full = quiet(LongComBatGAM(subject="subject", formula="sex", smooth="age").fit_transform, X, cov)
    assert np.array_equal(np.isnan(out.to_numpy()), mask)
    obs = ~mask

    def rmse(Y):
        return float(np.sqrt(np.mean((((Y.to_numpy() - life.truth.to_numpy()) / life.sigma)[obs]) ** 2)))

    assert rmse(out) < 1.1 * rmse(full)
    diff = np.sqrt(np.mean((((out.to_numpy() - full.to_numpy()) / life.sigma)[obs]) ** 2))
    assert diff < 0.05


def test_row_order_does_not_matter(life, fitted):
    """The REML estimates are roots of derivatives, fixed to rounding: a fit on the rows in another order
    gives the same variance ratios and output (to 1e-9)."""
    hm, Xh = fitted
    rows = np.random.default_rng(11).permutation(len(life.X))
    hm2 = quiet(LongComBatGAM(subject="subject", formula="sex", smooth="age").fit, life.X.iloc[rows],
                life.covariates.iloc[rows])
    interior = (hm.lambda_ < 1e8).to_numpy()
    np.testing.assert_allclose(hm2.lambda_[interior], hm.lambda_[interior], rtol=1e-8)
    np.testing.assert_allclose(hm2.ranef_var_, hm.ranef_var_, rtol=1e-8)
    np.testing.assert_allclose(hm2.transform(life.X, life.covariates).to_numpy(), Xh.to_numpy(), rtol=0,
                               atol=1e-9 * life.sigma)
