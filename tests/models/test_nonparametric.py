"""Non-parametric empirical Bayes (methods.md §1.2 S7''): log-space stability and the formula itself.

The prior for feature v at site i is the empirical distribution of the other features' pairs
(gamma_hat_iv', delta2_hat_iv'). Each pair is weighted by the Gaussian likelihood of feature v's
standardized data at that site:

    w_v' = prod_j phi(z_ijv; gamma_hat_iv', delta2_hat_iv')
    gamma*_iv = sum_{v' != v} w_v' gamma_hat_iv' / sum w,   delta2*_iv = sum w delta2_hat_iv' / sum w.

For a large site, neuroCombat evaluates this raw product, which underflows, and it returns NaN.
featharm works with log w.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp
from scipy.stats import norm

import featharm


def make_data(seed: int, sizes, n_features: int):
    """ComBat-model data (age, sex; unbalanced sites), indexed by subject id."""
    rng = np.random.default_rng(seed)
    m, n, p = len(sizes), int(sum(sizes)), n_features
    site = np.repeat([f"site{i}" for i in range(m)], sizes)
    rng.shuffle(site)
    codes = np.unique(site, return_inverse=True)[1]
    age = np.round(rng.uniform(20, 85, n) * 4) / 4
    sex = rng.choice(["F", "M"], n)
    sigma = rng.uniform(0.1, 0.3, p)
    gamma = rng.normal(rng.normal(0, 0.5, m)[:, None], 0.4, (m, p))
    delta = np.exp(rng.normal(0, 0.3, m))[:, None] * np.exp(rng.normal(0, 0.15, (m, p)))
    Y = (rng.uniform(2, 4, p) + np.outer(age, rng.normal(-0.01, 0.003, p))
         + np.outer(sex == "M", rng.normal(0, 0.05, p))
         + sigma * (gamma[codes] + delta[codes] * rng.standard_normal((n, p))))
    ids = pd.Index([f"sub{i:04d}" for i in range(n)], name="subject_id")
    return (pd.DataFrame(Y, index=ids, columns=[f"roi{j:02d}" for j in range(p)]),
            pd.DataFrame({"site": site, "age": age, "sex": sex}, index=ids))


def standardized(model: featharm.ComBat, X: pd.DataFrame, cov: pd.DataFrame) -> np.ndarray:
    """z = (y - alpha - X beta) / sigma, rebuilt from the fitted model's stored parameters."""
    Xc = model.design_.transform(cov)
    mean = model.alpha_.to_numpy() + Xc @ model.beta_.to_numpy()
    return (X.to_numpy() - mean) / model.sigma_.to_numpy()


def site_moments(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and ddof=1 variance of one site's standardized data (S5)."""
    return z.mean(axis=0), z.var(axis=0, ddof=1)


def naive_int_eprior(z: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S7'' exactly as written: products of normal densities, loops, no logs. Only for small sites."""
    n, p = z.shape
    g_star, d_star = np.empty(p), np.empty(p)
    for v in range(p):
        num_g = num_d = den = 0.0
        for w_idx in range(p):
            if w_idx == v:
                continue
            dens = (2 * np.pi * d_hat[w_idx]) ** -0.5 * np.exp(-((z[:, v] - g_hat[w_idx]) ** 2) / (2 * d_hat[w_idx]))
            w = np.prod(dens)
            num_g += w * g_hat[w_idx]
            num_d += w * d_hat[w_idx]
            den += w
        assert den > 0, "the naive product underflowed: use a smaller site"
        g_star[v], d_star[v] = num_g / den, num_d / den
    return g_star, d_star


def logspace_int_eprior(z: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S7'' from the raw z with scipy's logpdf and log-sum-exp (independent of featharm's sufficient statistics)."""
    p = z.shape[1]
    # L[v, v'] = sum_j log phi(z_jv; g_v', d_v')
    L = norm.logpdf(z[:, :, None], loc=g_hat[None, None, :], scale=np.sqrt(d_hat)[None, None, :]).sum(axis=0)
    L[np.arange(p), np.arange(p)] = -np.inf
    W = np.exp(L - logsumexp(L, axis=1, keepdims=True))
    return W @ g_hat, W @ d_hat


@pytest.mark.parametrize("mean_only", [False, True], ids=["full", "mean_only"])
def test_log_space_equals_naive_product_on_small_sites(mean_only):
    # sites of 12, 30 and 55 subjects: the raw product of densities stays representable in float64
    X, cov = make_data(11, (12, 30, 55), 15)
    model = featharm.ComBat(batch="site", formula="age + sex", parametric=False, mean_only=mean_only).fit(X, cov)
    z = standardized(model, X, cov)
    worst = 0.0
    for site in model.batches_:
        rows = (cov["site"] == site).to_numpy()
        g_hat, d_hat = site_moments(z[rows])
        np.testing.assert_allclose(model.gamma_hat_.loc[site], g_hat, rtol=0, atol=1e-12)
        if mean_only:
            d_hat = np.ones_like(d_hat)  # S7'': mean-only sets delta2_hat := 1 first
        np.testing.assert_allclose(model.delta_hat_.loc[site], d_hat, rtol=0, atol=1e-12)
        g_naive, d_naive = naive_int_eprior(z[rows], g_hat, d_hat)
        worst = max(worst, np.abs(model.gamma_star_.loc[site] - g_naive).max(),
                    np.abs(model.delta_star_.loc[site] - d_naive).max())
        np.testing.assert_allclose(model.gamma_star_.loc[site], g_naive, rtol=0, atol=1e-12)
        np.testing.assert_allclose(model.delta_star_.loc[site], d_naive, rtol=0, atol=1e-12)
        # the posterior is a weighted average of the *other* features' estimates: not the feature's own
        assert not np.allclose(model.gamma_star_.loc[site], g_hat)
    if mean_only:
        # a weighted average of ones: 1 up to rounding (neuroCombat gives the same 1 - 2e-16)
        np.testing.assert_allclose(model.delta_star_.to_numpy(), 1.0, rtol=0, atol=1e-14)
    print(f"non-parametric EB, log space vs naive product (mean_only={mean_only}): max diff {worst:.1e}")


def test_large_site_is_finite():
    """A site of 900 subjects: featharm stays finite, and it matches an independent log-space computation."""
    X, cov = make_data(3, (900, 60, 120), 20)
    model = featharm.ComBat(batch="site", formula="age + sex", parametric=False)
    out = model.fit_transform(X, cov)

    assert np.isfinite(out.to_numpy()).all()
    assert np.isfinite(model.gamma_star_.to_numpy()).all()
    assert np.isfinite(model.delta_star_.to_numpy()).all() and (model.delta_star_.to_numpy() > 0).all()

    z = standardized(model, X, cov)
    rows = (cov["site"] == "site0").to_numpy()
    assert rows.sum() == 900
    g_hat, d_hat = site_moments(z[rows])
    # the raw product really underflows at this size: every weight would be 0 (or 0 * inf)
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        raw = np.prod((2 * np.pi * d_hat[1]) ** -0.5 * np.exp(-((z[rows, 0] - g_hat[1]) ** 2) / (2 * d_hat[1])))
    assert raw == 0.0

    g_ref, d_ref = logspace_int_eprior(z[rows], g_hat, d_hat)
    g_fh, d_fh = model.gamma_star_.loc["site0"].to_numpy(), model.delta_star_.loc["site0"].to_numpy()
    print(f"900-subject site: featharm vs scipy log-sum-exp: gamma* {np.abs(g_fh - g_ref).max():.1e}, "
          f"delta* {np.abs(d_fh - d_ref).max():.1e}")
    np.testing.assert_allclose(g_fh, g_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(d_fh, d_ref, rtol=0, atol=1e-10)
    # a weighted average of the other features' estimates lies within their range
    for v in range(len(g_hat)):
        others = np.delete(np.arange(len(g_hat)), v)
        assert g_hat[others].min() - 1e-12 <= g_fh[v] <= g_hat[others].max() + 1e-12
        assert d_hat[others].min() - 1e-12 <= d_fh[v] <= d_hat[others].max() + 1e-12


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore:overflow encountered in power:RuntimeWarning:neuroCombat")
@pytest.mark.filterwarnings("ignore:invalid value encountered in scalar divide:RuntimeWarning:neuroCombat")
def test_neurocombat_underflows_on_large_site():
    """Documentation of the reference's failure (methods.md §1.2 S7''): neuroCombat returns NaN here."""
    nc = pytest.importorskip("neuroCombat")
    X, cov = make_data(3, (900, 60, 120), 20)
    res = nc.neuroCombat(np.array(X.to_numpy().T, dtype=np.float64), cov.reset_index(drop=True), "site",
                         categorical_cols=["sex"], continuous_cols=["age"], parametric=False)
    assert np.isnan(res["estimates"]["gamma.star"][0]).all()  # the 900-subject site
    assert np.isnan(res["data"]).all()  # 0 * NaN in its final adjustment spreads NaN to every site
    out = featharm.ComBat(batch="site", formula="age + sex", parametric=False).fit_transform(X, cov)
    assert np.isfinite(out.to_numpy()).all()
