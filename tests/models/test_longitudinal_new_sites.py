"""LongComBat with sites not seen at fit: ``transform(..., new_sites="estimate")`` (methods.md §3 and §5.7).

A new site's scans are standardized against the frozen fixed effects and SD after removing each subject's
random effect: the fitted BLUP for subjects seen at fit, and for subjects not seen at fit a BLUP predicted
from their scans at the new site under the frozen variance components (jointly with the site's intercept).
The site's location/scale and its EB posterior (longCombat's 30 Jacobi iterations) come from those ``z``.

Oracles: (1) a fitted site relabelled as new, with its subjects known, reproduces ``fit_transform`` (the same
``z``, the same per-site priors); (2) with subjects nested in sites, relabelling the subjects too gives the
same result, because the mixed-model equations restricted to that site's rows with ``beta`` and the
variance components fixed are exactly those of the fit; (3) the prediction of new subjects' random effects
equals a dense GLS / BLUP computed with the full covariance matrix ``V = sigma2 I + Z G Z'``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import featharm
from featharm import LongComBat
from featharm.cli import main
from featharm.datasets._simulate_long import make_longitudinal
from featharm.exceptions import BatchError, UnseenBatchError
from featharm.models.longitudinal import _predict_new_subjects

from test_longitudinal import FORMULA, fit_reference_model

# The small_cs/small_long features are 2 volumes and thicknesses: with the default priors="auto" the 2 volumes
# take the pooled prior (FeatureGroupWarning); these tests check other things (R parity passes priors="pool").
pytestmark = pytest.mark.filterwarnings("ignore::featharm.exceptions.FeatureGroupWarning")


def _fit(X, cov, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small batches / single scans in subsets: not what is tested here
        return LongComBat(batch="site", subject="subject", formula="age + sex + time", **kw).fit(X, cov)


@pytest.fixture(scope="module")
def nested():
    sim = make_longitudinal(n_subjects=120, n_sites=4, n_features=12, switch_prob=0.0, random_state=1)
    return sim.X, sim.covariates


@pytest.fixture(scope="module")
def ref_fit():
    return fit_reference_model()


def test_relabelled_site_with_known_subjects_reproduces_fit(ref_fit):
    hm, X, cov, Xh = ref_fit
    cov2 = cov.copy()
    rows = (cov2["site"] == "site03").to_numpy()
    cov2.loc[rows, "site"] = "scanner_new"
    out = hm.transform(X, cov2, new_sites="estimate")
    np.testing.assert_allclose(out[rows].to_numpy(), Xh[rows].to_numpy(), rtol=0,
                               atol=1e-10 * X.std().min())
    # seen sites: bit for bit as a plain transform of those rows
    assert np.array_equal(out[~rows].to_numpy(), hm.transform(X[~rows], cov[~rows]).to_numpy())
    assert list(hm.batches_) == ["site01", "site02", "site03", "site04"]  # the model is not changed


@pytest.mark.parametrize("slope", [False, True])
def test_relabelled_site_and_subjects_reproduce_fit_when_nested(nested, slope):
    X, cov = nested
    kw = {"time": "time", "random_slope": True} if slope else {}
    hm = _fit(X, cov, **kw)
    Xh = hm.transform(X, cov)
    rows = (cov["site"] == "site02").to_numpy()
    cov2 = cov.copy()
    cov2.loc[rows, "site"] = "NEW"
    cov2.loc[rows, "subject"] = "new_" + cov2.loc[rows, "subject"]
    out = hm.transform(X, cov2, new_sites="estimate")
    np.testing.assert_allclose(out[rows].to_numpy(), Xh[rows].to_numpy(), rtol=0, atol=1e-10)
    assert np.array_equal(out[~rows].to_numpy(), Xh[~rows].to_numpy())


@pytest.mark.parametrize("q", [1, 2])
def test_new_subject_blups_match_dense_gls(q):
    """Two new sites, subjects crossing them, known-subject rows mixed in: dense GLS / BLUP per feature."""
    rng = np.random.default_rng(3)
    n, p, k = 40, 3, 2
    site = rng.integers(0, k, n)
    unknown = rng.random(n) < 0.8
    h = np.full(n, -1)
    h[unknown] = rng.integers(0, 9, unknown.sum())
    h[unknown] = np.unique(h[unknown], return_inverse=True)[1]
    t = rng.uniform(0, 3, n)
    R = rng.normal(size=(n, p))
    sigma2 = rng.uniform(0.3, 1.0, p)
    A = rng.normal(size=(p, q, q))
    G = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(q)
    got = _predict_new_subjects(R, site, k, unknown, h[unknown], t[unknown] if q == 2 else None, sigma2, G)
    nu = h.max() + 1
    Z1 = np.ones((n, 1)) if q == 1 else np.column_stack([np.ones(n), t])
    Zf = np.zeros((n, nu * q))  # random-effect design of the unknown subjects (known rows: none)
    for i in np.flatnonzero(unknown):
        Zf[i, h[i] * q:(h[i] + 1) * q] = Z1[i]
    Ad = np.eye(k)[site]
    for f in range(p):
        Gf = np.kron(np.eye(nu), G[f])
        V = sigma2[f] * np.eye(n) + Zf @ Gf @ Zf.T
        Vi = np.linalg.inv(V)
        c = np.linalg.solve(Ad.T @ Vi @ Ad, Ad.T @ Vi @ R[:, f])
        u = Gf @ Zf.T @ Vi @ (R[:, f] - Ad @ c)
        np.testing.assert_allclose(got[:, f], (Zf @ u)[unknown], rtol=1e-10, atol=1e-12)


def test_leave_one_site_out_is_close_to_fit_on_all_sites():
    """Fit without one site and estimate it vs fit on all sites (30 % of subjects change site).

    Without a reference site the pooled target moves when a site is left out, so the held-out site is
    compared with how much the sites in both fits move. Measured (seed 0, 300 subjects, 30 features):
    held-out site01 moves by a mean 0.11 SD (max 0.87), the seen sites by 0.071 SD; with subjects nested in
    sites 0.071 vs 0.068 SD. Harmonizing new subjects at population level (u = 0) instead would move the
    held-out site by 0.37 SD (max 2.0): its scale estimate would absorb the subject variance.
    """
    sim = make_longitudinal(n_subjects=300, n_sites=4, n_features=30, switch_prob=0.3, random_state=0)
    X, cov = sim.X, sim.covariates
    rows = (cov["site"] == "site01").to_numpy()
    full, part = _fit(X, cov), _fit(X[~rows], cov[~rows])
    out_full, out_part = full.transform(X, cov), part.transform(X, cov, new_sites="estimate")
    sd = X.std().to_numpy()
    d_new = np.abs(out_part[rows].to_numpy() - out_full[rows].to_numpy()) / sd
    d_seen = np.abs(out_part[~rows].to_numpy() - out_full[~rows].to_numpy()) / sd
    assert d_new.mean() < 1.6 * d_seen.mean() + 0.02, (d_new.mean(), d_seen.mean())
    assert np.array_equal(out_part[~rows].to_numpy(), part.transform(X[~rows], cov[~rows]).to_numpy())
    # distance of the held-out site to the site-free truth: raw 0.278, fit on all 0.148, estimated 0.169
    err = lambda A: np.sqrt(((A[rows].to_numpy() - sim.truth[rows].to_numpy()) ** 2).mean())  # noqa: E731
    assert err(out_part) < min(0.7 * err(X), 1.3 * err(out_full)), (err(out_part), err(X), err(out_full))


def test_eb_false_new_site_is_standardized_against_frozen_model(nested):
    X, cov = nested
    rows = (cov["site"] == "site03").to_numpy()
    hm = _fit(X[~rows], cov[~rows], eb=False)
    out = hm.transform(X, cov, new_sites="estimate")
    fixed = hm.alpha_.to_numpy() + hm.design_.transform(cov[rows]) @ hm.beta_.to_numpy()
    # z of the output without the predicted random part: mean 0 and variance 1 over the new site
    prep = hm._prepare(X, cov, fitting=False, new_sites="estimate")
    prep.X = hm.design_.transform(prep.covariates)
    U = hm._standardized(prep, rows)[1]  # the random effects predicted for the new site's rows
    z = (out[rows].to_numpy() - fixed - U) / hm.sigma_.to_numpy()
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(z.var(axis=0, ddof=1), 1.0, atol=1e-10)


@pytest.mark.parametrize("standardize", ["msr", "marginal"])
def test_standardize_options_estimate_new_sites(nested, standardize):
    X, cov = nested
    hm = _fit(X, cov, standardize=standardize)
    Xh = hm.transform(X, cov)
    rows = (cov["site"] == "site04").to_numpy()
    cov2 = cov.copy()
    cov2.loc[rows, "site"] = "NEW"
    cov2.loc[rows, "subject"] = "new_" + cov2.loc[rows, "subject"]
    out = hm.transform(X, cov2, new_sites="estimate")
    np.testing.assert_allclose(out[rows].to_numpy(), Xh[rows].to_numpy(), rtol=0, atol=1e-10)


def test_default_error_min_size_and_save_load(nested, tmp_path):
    X, cov = nested
    rows = (cov["site"] == "site01").to_numpy()
    hm = _fit(X[~rows], cov[~rows])
    with pytest.raises(UnseenBatchError, match="site01"):
        hm.transform(X, cov)
    few = np.concatenate([np.flatnonzero(~rows)[:30], np.flatnonzero(rows)[:4]])
    with pytest.raises(BatchError, match=r"'site01' \(4 rows\).*min_new_site_size=5"):
        hm.transform(X.iloc[few], cov.iloc[few], new_sites="estimate")
    assert np.isfinite(hm.transform(X.iloc[few], cov.iloc[few], new_sites="estimate",
                                    min_new_site_size=4).to_numpy()).all()
    hm.save(tmp_path / "m.fhm")
    loaded = featharm.load_model(tmp_path / "m.fhm")
    np.testing.assert_array_equal(loaded.transform(X, cov, new_sites="estimate").to_numpy(),
                                  hm.transform(X, cov, new_sites="estimate").to_numpy())


def test_cli_apply_new_sites_estimate(tmp_path):
    sim = make_longitudinal(n_subjects=80, n_sites=3, n_features=6, switch_prob=0.0, random_state=2)
    data = pd.concat([sim.covariates, sim.X], axis=1)
    data.index.name = "scan"
    data = data.reset_index()
    train, path, model, out = tmp_path / "train.csv", tmp_path / "all.csv", tmp_path / "m.fhm", tmp_path / "o.csv"
    data[data["site"] != "site03"].to_csv(train, index=False)
    data.to_csv(path, index=False)
    assert main(["harmonize", str(train), "--batch", "site", "--method", "longitudinal", "--subject", "subject",
                 "--formula", FORMULA, "--id", "scan", "--save-model", str(model), "--out",
                 str(tmp_path / "h.csv"), "--quiet"]) == 0
    assert main(["apply", str(model), str(path), "--id", "scan", "--new-sites", "estimate", "--out", str(out),
                 "--quiet"]) == 0
    got = pd.read_csv(out)
    cov = data.set_index("scan")
    expect = featharm.load_model(model).transform(cov[sim.X.columns], cov, new_sites="estimate")
    np.testing.assert_allclose(got[sim.X.columns].to_numpy(), expect.to_numpy(), rtol=0, atol=1e-12)
