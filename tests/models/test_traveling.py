"""TravelingSubjects (docs/methods.md §5.8) on simulated traveling subjects with known site biases.

Oracles: a dense least-squares fit with every subject dummy (numpy ``lstsq``) for the estimates and their
standard errors; the planted biases and gains of :func:`featharm.datasets.make_traveling` for recovery
(tolerances stated from the standard errors); the same scans without site effects (``truth``) for what
correction can reach.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.datasets import make_traveling
from featharm.exceptions import (
    BatchError,
    CollinearityWarning,
    ConfoundingError,
    DisconnectedSitesError,
    InputError,
    MissingValueError,
    UnseenBatchError,
)


@pytest.fixture(scope="module")
def big():
    return make_traveling(n_subjects=40, n_sites=4, n_features=300, random_state=0)


def _dense_fit(Y, cov, formula_cols=(), ref=None):
    """Oracle: y ~ 1 + subject dummies + site contrasts (+ covariates), a dense lstsq over all features."""
    subj = pd.factorize(cov["subject"], sort=True)[0]
    sites = sorted(cov["site"].unique())
    site = np.searchsorted(sites, cov["site"].to_numpy())
    n, K, S = len(cov), len(sites), subj.max() + 1
    D = np.zeros((n, S))
    D[np.arange(n), subj] = 1.0
    C = np.vstack([np.eye(K - 1), -np.ones((1, K - 1))]) if ref is None else np.delete(np.eye(K), ref, axis=1)
    W = np.hstack([D, C[site], cov[list(formula_cols)].to_numpy(float)])
    coef, *_ = np.linalg.lstsq(W, Y, rcond=None)
    resid = Y - W @ coef
    dof = n - W.shape[1]
    sigma2 = (resid**2).sum(0) / dof
    cov_theta = np.linalg.inv(W.T @ W)[S:S + K - 1, S:S + K - 1]
    se = np.sqrt(np.diag(C @ cov_theta @ C.T)[:, None] * sigma2)
    return C @ coef[S:S + K - 1], coef[S + K - 1:], np.sqrt(sigma2), se, dof


# ------------------------------------------------------------------------------------------ estimates
@pytest.mark.parametrize("ref", [None, "site03"])
def test_estimates_equal_the_dense_least_squares_fit(ref):
    ts = make_traveling(n_subjects=9, n_sites=3, n_features=7, coverage=0.7, random_state=3)
    hm = fh.TravelingSubjects(formula="age", ref_batch=ref).fit(ts.X, ts.covariates)
    m, b, sigma, se, dof = _dense_fit(ts.X.to_numpy(), ts.covariates, ["age"],
                                      None if ref is None else 2)
    np.testing.assert_allclose(hm.bias_.to_numpy(), m, atol=1e-10)
    np.testing.assert_allclose(hm.beta_.to_numpy(), b, atol=1e-9)
    np.testing.assert_allclose(hm.sigma_.to_numpy(), sigma, rtol=1e-10)
    np.testing.assert_allclose(hm.bias_se_.to_numpy(), se, rtol=1e-9, atol=1e-14)
    assert (hm.dof_ == dof).all()
    if ref is None:
        np.testing.assert_allclose(hm.bias_.sum(axis=0), 0.0, atol=1e-12)
    else:
        assert (hm.bias_.loc[ref] == 0).all() and (hm.bias_se_.loc[ref] == 0).all()


def test_biases_are_recovered_to_sampling_error(big):
    hm = fh.TravelingSubjects().fit(big.X, big.covariates)
    z = ((hm.bias_ - big.bias) / hm.bias_se_).to_numpy()
    # 300 features x 4 sites of (t-distributed) z-scores: their mean square is 1 +- about 0.05
    assert abs((z**2).mean() - 1.0) < 0.15
    assert np.abs(z).max() < 5.0
    assert np.abs(hm.sigma_ / big.noise_sd - 1).median() < 0.05


def test_reference_coding_is_the_sum_to_zero_fit_shifted(big):
    X, cov = big.X, big.covariates
    a = fh.TravelingSubjects().fit(X, cov)
    b = fh.TravelingSubjects(ref_batch="site02").fit(X, cov)
    np.testing.assert_allclose(b.bias_.to_numpy(), (a.bias_ - a.bias_.loc["site02"]).to_numpy(), atol=1e-12)
    out_a, out_b = a.transform(X, cov), b.transform(X, cov)
    at_ref = (cov["site"] == "site02").to_numpy()
    pd.testing.assert_frame_equal(out_b[at_ref], X[at_ref], check_exact=True)  # reference scans unchanged
    # the two codings differ by the reference site's bias only (a constant per feature)
    np.testing.assert_allclose((out_b - out_a).to_numpy(), np.tile(a.bias_.loc["site02"].to_numpy(), (len(X), 1)),
                               atol=1e-12)


def test_transform_subtracts_the_bias_of_each_scans_site(big):
    hm = fh.TravelingSubjects().fit(big.X, big.covariates)
    out = hm.transform(big.X, big.covariates)
    expect = big.X.to_numpy() - hm.bias_.loc[big.covariates["site"]].to_numpy()
    np.testing.assert_array_equal(out.to_numpy(), expect)


def test_held_out_subjects_agree_across_sites_after_correction(big):
    """Fit on half the traveling subjects, correct the other half: their between-site SD falls to that of
    the scans without site effects (the noise level) and their ICC rises to its value."""
    X, cov = big.X, big.covariates
    first = cov["subject"].isin(sorted(cov["subject"].unique())[:20])
    hm = fh.TravelingSubjects().fit(X[first], cov[first])
    Xo, co = X[~first], cov[~first]
    res = fh.diagnostics.traveling_subject_reliability(
        Xo, co, harmonized={"traveling": hm.transform(Xo, co), "truth": big.truth[~first]})
    s = res.summary_table.set_index("data")
    # the estimated biases add Var(m_hat) ~ sigma^2 (K-1)/(K n_subjects) ~ 4 % of the noise variance
    assert s.loc["traveling", "between_site_sd"] < 1.06 * s.loc["truth", "between_site_sd"]
    assert s.loc["raw", "between_site_sd"] > 2 * s.loc["truth", "between_site_sd"]
    assert s.loc["traveling", "icc"] > s.loc["raw", "icc"] + 0.05
    assert abs(s.loc["traveling", "icc"] - s.loc["truth", "icc"]) < 0.01
    per = res["traveling"]["icc"] > res["raw"]["icc"]
    assert per.mean() > 0.95


def test_a_time_varying_covariate_keeps_the_biases_unbiased():
    """Half the subjects visit the sites in the same order, one year apart, while the features decline with
    age: without age in the formula the decline leaks into the later sites' biases; with it, it does not."""
    rng = np.random.default_rng(5)
    S, K, p = 40, 3, 200
    subj = np.repeat(np.arange(S), K)
    site = np.concatenate([rng.permutation(K) if rng.random() < 0.5 else np.arange(K) for _ in range(S)])
    age = rng.uniform(30, 60, S)[subj] + np.tile(np.arange(K), S) * 1.0
    bias = rng.normal(0, 0.3, (K, p))
    bias -= bias.mean(0)
    b_age = rng.normal(-0.1, 0.02, p)
    Y = rng.normal(0, 1, (S, p))[subj] + bias[site] + np.outer(age, b_age) + 0.1 * rng.normal(size=(S * K, p))
    ids = [f"scan{i}" for i in range(S * K)]
    cov = pd.DataFrame({"subject": subj, "site": [f"s{k}" for k in site], "age": age}, index=ids)
    X = pd.DataFrame(Y, index=ids, columns=[f"f{j}" for j in range(p)])
    with_age = fh.TravelingSubjects(formula="age").fit(X, cov)
    without = fh.TravelingSubjects().fit(X, cov)
    z_with = ((with_age.bias_.to_numpy() - bias) / with_age.bias_se_.to_numpy())
    z_without = ((without.bias_.to_numpy() - bias) / without.bias_se_.to_numpy())
    assert 0.8 < (z_with**2).mean() < 1.25  # unbiased: z-scores of unit variance
    assert (z_without**2).mean() > 2  # the age decline biases the sites visited later (1 +- 0.06 if not)
    assert np.corrcoef(with_age.beta_.loc["age"], b_age)[0, 1] > 0.8


# ------------------------------------------------------------------------------------------ scale
def test_gains_are_recovered_and_correction_reaches_the_truth():
    ts = make_traveling(n_subjects=40, n_sites=4, n_features=200, log_gain_sd=0.1, random_state=2)
    hm = fh.TravelingSubjects(scale=True).fit(ts.X, ts.covariates)
    log_err = np.log(hm.scale_ / ts.gain).to_numpy()
    # sampling SD of a log gain with 40 subjects of SD 1 and noise 0.2 is about 0.025
    assert np.abs(log_err).mean() < 0.03 and abs(log_err.mean()) < 0.005
    np.testing.assert_allclose(np.log(hm.scale_).sum(axis=0), 0.0, atol=1e-10)  # geometric mean 1
    np.testing.assert_allclose(hm.bias_.sum(axis=0), 0.0, atol=1e-10)
    out = hm.transform(ts.X, ts.covariates)
    expect = (ts.X.to_numpy() - hm.bias_.loc[ts.covariates["site"]].to_numpy()) / \
        hm.scale_.loc[ts.covariates["site"]].to_numpy()
    np.testing.assert_allclose(out.to_numpy(), expect, rtol=1e-15, atol=0)
    loc_only = fh.TravelingSubjects().fit_transform(ts.X, ts.covariates)
    err = np.abs(out - ts.truth).to_numpy().mean()
    assert err < 0.6 * np.abs(loc_only - ts.truth).to_numpy().mean()
    assert err < 0.2 * ts.noise_sd


def test_scale_without_gains_stays_near_one(big):
    hm = fh.TravelingSubjects(scale=True).fit(big.X, big.covariates)
    assert np.abs(np.log(hm.scale_.to_numpy())).mean() < 0.03
    # and the corrected scans are then the location-only ones, to a fraction of the noise
    loc = fh.TravelingSubjects().fit(big.X, big.covariates)
    diff = hm.transform(big.X, big.covariates) - loc.transform(big.X, big.covariates)
    assert np.abs(diff.to_numpy()).mean() < 0.25 * big.noise_sd


def test_scale_with_a_reference_site_keeps_its_scans():
    ts = make_traveling(n_subjects=30, n_sites=3, n_features=20, log_gain_sd=0.1, random_state=4)
    hm = fh.TravelingSubjects(scale=True, ref_batch="site01").fit(ts.X, ts.covariates)
    assert (hm.scale_.loc["site01"] == 1).all() and (hm.bias_.loc["site01"] == 0).all()
    rel = np.log(hm.scale_ / (ts.gain / ts.gain.loc["site01"])).to_numpy()
    assert np.abs(rel).mean() < 0.04
    out = hm.transform(ts.X, ts.covariates)
    ref = (ts.covariates["site"] == "site01").to_numpy()
    pd.testing.assert_frame_equal(out[ref], ts.X[ref], check_exact=True)


def test_scale_needs_three_traveling_subjects_per_site():
    ts = make_traveling(n_subjects=12, n_sites=3, n_features=5, random_state=1)
    cov = ts.covariates.copy()
    keep = ~((cov["site"] == "site03") & ~cov["subject"].isin(["ts000", "ts001"]))
    X, cov = ts.X[keep], cov[keep]
    fh.TravelingSubjects().fit(X, cov)  # the location-only fit is fine with 2
    with pytest.raises(BatchError, match=r"scale=True .* 'site03' \(2\)"):
        fh.TravelingSubjects(scale=True).fit(X, cov)


# ------------------------------------------------------------------------------------------ the design
def test_unconnected_sites_are_named():
    ts = make_traveling(n_subjects=12, n_sites=4, n_features=5, random_state=1)
    cov = ts.covariates.copy()
    # site04 and site03 only see subjects 8-11, who are scanned nowhere else
    late = cov["subject"].isin([f"ts{i:03d}" for i in range(8, 12)])
    keep = np.where(late, cov["site"].isin(["site03", "site04"]), ~cov["site"].isin(["site03", "site04"]))
    with pytest.raises(DisconnectedSitesError, match=r"site\(s\) \['site03', 'site04'\] of 'site' share no "
                                                     r"traveling subject") as info:
        fh.TravelingSubjects().fit(ts.X[keep], cov[keep])
    assert "['site01', 'site02'] | ['site03', 'site04']" in str(info.value)
    assert isinstance(info.value, ConfoundingError) and isinstance(info.value, ValueError)


def test_a_subject_constant_covariate_is_dropped_with_a_warning(big):
    with pytest.warns(CollinearityWarning, match=r"\['sex\[T.M\]'\] .* constant within every traveling subject"):
        hm = fh.TravelingSubjects(formula="age + sex").fit(big.X, big.covariates)
    assert hm.aliased_covariates_ == ["sex[T.M]"] and (hm.beta_.loc["sex[T.M]"] == 0).all()
    ref = fh.TravelingSubjects(formula="age").fit(big.X, big.covariates)
    np.testing.assert_allclose(hm.bias_.to_numpy(), ref.bias_.to_numpy(), atol=1e-12)
    assert "CollinearityWarning" in {w["category"] for w in hm.fit_warnings_}


def test_a_covariate_confounded_with_site_is_refused(big):
    cov = big.covariates.assign(field=big.covariates["site"].map({"site01": 1.5, "site02": 3.0, "site03": 3.0,
                                                                  "site04": 1.5}))
    with pytest.raises(ConfoundingError, match="'field' is, within the traveling subjects, a combination of the "
                                               "sites"):
        fh.TravelingSubjects(formula="field").fit(big.X, cov)


def test_bad_inputs_are_named(big):
    X, cov = big.X, big.covariates
    one = (cov["site"] == "site01").to_numpy()
    with pytest.raises(BatchError, match="2 or more sites"):
        fh.TravelingSubjects().fit(X[one], cov[one])
    with pytest.raises(ValueError, match="no subject column 'participant'"):
        fh.TravelingSubjects(subject="participant").fit(X, cov)
    with pytest.raises(ValueError, match="uses 'subject'"):
        fh.TravelingSubjects(formula="age + subject").fit(X, cov)
    with pytest.raises(BatchError, match="ref_batch='site09' is not a level"):
        fh.TravelingSubjects(ref_batch="site09").fit(X, cov)
    alone = cov.assign(subject=[f"s{i}" for i in range(len(cov))])  # nobody scanned twice
    with pytest.raises(DisconnectedSitesError):
        fh.TravelingSubjects().fit(X, alone)


def test_unseen_sites_are_refused_naming_them(big):
    hm = fh.TravelingSubjects().fit(big.X, big.covariates)
    cov = big.covariates.copy()
    cov.loc[cov.index[:3], "site"] = "siteNEW"
    with pytest.raises(UnseenBatchError, match=r"'siteNEW' \(3 rows\).*traveling subjects were scanned"):
        hm.transform(big.X, cov)
    with pytest.raises(InputError, match="cannot estimate sites not seen at fit"):
        hm.transform(big.X, cov, new_sites="estimate")


def test_other_scans_of_the_fitted_sites_are_corrected(big):
    """The point of the method: the biases apply to scans of people who never traveled (the main study)."""
    hm = fh.TravelingSubjects(formula="age").fit(big.X, big.covariates)
    main = make_traveling(n_subjects=50, n_sites=4, n_features=300, coverage=0.0, random_state=9)
    # same features and sites, new people scanned at one site each: plant the same biases
    Xm = main.truth + big.bias.loc[main.covariates["site"]].to_numpy()
    out = hm.transform(Xm, main.covariates[["site"]])  # the site column only: no subject, no age
    resid = (out - main.truth).to_numpy()
    bias_err = (hm.bias_ - big.bias).loc[main.covariates["site"]].to_numpy()
    np.testing.assert_allclose(resid, -bias_err, atol=1e-12)


# ------------------------------------------------------------------------------------------ missing values
def test_missing_values_fit_each_feature_on_its_observed_scans(big):
    X = big.X.iloc[:, :12].copy()
    cov = big.covariates
    rng = np.random.default_rng(0)
    X.iloc[rng.choice(len(X), 10, replace=False), 3] = np.nan
    X.iloc[rng.choice(len(X), 6, replace=False), 7] = np.nan
    hm = fh.TravelingSubjects(formula="age").fit(X, cov)
    for j in (3, 7):
        rows = X.iloc[:, j].notna().to_numpy()
        alone = fh.TravelingSubjects(formula="age").fit(X.iloc[rows, [j]], cov[rows])
        np.testing.assert_allclose(hm.bias_.iloc[:, j], alone.bias_.iloc[:, 0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(hm.bias_se_.iloc[:, j], alone.bias_se_.iloc[:, 0], rtol=1e-10)
    complete = fh.TravelingSubjects(formula="age").fit(X.drop(columns=X.columns[[3, 7]]), cov)
    np.testing.assert_allclose(hm.bias_.drop(columns=X.columns[[3, 7]]), complete.bias_, rtol=1e-12, atol=1e-14)
    out = hm.transform(X, cov)
    assert (out.isna() == X.isna()).all().all()
    assert hm.n_obs_.iloc[:, 3].sum() == X.iloc[:, 3].notna().sum()


def test_missing_values_that_disconnect_or_empty_a_site_are_named(big):
    X = big.X.iloc[:, :4].copy()
    cov = big.covariates
    X.loc[(cov["site"] == "site04").to_numpy(), "roi002"] = np.nan
    with pytest.raises(MissingValueError, match=r"'roi002'.*no observed scan at site\(s\) \['site04'\]"):
        fh.TravelingSubjects().fit(X, cov)


# ------------------------------------------------------------------------------------------ persistence
@pytest.mark.parametrize("params", [dict(), dict(scale=True, ref_batch="site03", formula="age + sex")])
def test_save_load_round_trip(big, tmp_path, params):
    X = big.X.copy()
    X.iloc[0, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollinearityWarning)
        hm = fh.TravelingSubjects(**params).fit(X, big.covariates)
    hm.save(tmp_path / "ts.fhm")
    loaded = fh.load_model(tmp_path / "ts.fhm")
    assert type(loaded) is fh.TravelingSubjects and loaded.get_params() == hm.get_params()
    for attr in ("bias_", "bias_se_", "scale_", "noise_sd_", "beta_", "sigma_", "batch_sizes_", "n_subjects_",
                 "n_obs_"):
        assert getattr(loaded, attr).equals(getattr(hm, attr)), attr
    assert list(loaded.subjects_) == list(hm.subjects_) and loaded.aliased_covariates_ == hm.aliased_covariates_
    pd.testing.assert_frame_equal(loaded.transform(X, big.covariates), hm.transform(X, big.covariates),
                                  check_exact=True)


# ------------------------------------------------------------------------------------------ the README
def test_readme_traveling_block_runs():
    """The README's first traveling-subject block, with a main study for its placeholders."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = text.index("## Traveling subjects")
    code = re.search(r"```python\n(.*?)```", text[start:], flags=re.S).group(1)
    main = make_traveling(n_subjects=30, n_sites=4, n_features=20, coverage=0.0, random_state=7)
    ns = {"fh": fh, "X_main": main.X, "cov_main": main.covariates[["site"]]}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["hm"].bias_.shape == (4, 20)
    np.testing.assert_array_equal(ns["X_main_h"].to_numpy(),
                                  main.X.to_numpy() - ns["hm"].bias_.loc[main.covariates["site"]].to_numpy())
