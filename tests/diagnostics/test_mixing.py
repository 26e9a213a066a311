"""Site-mixing metrics (silhouette, kBET, iLISI): the vectorized code against direct one-row-at-a-time
implementations on small data, and their behaviour with and without a site effect."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats
from sklearn.metrics import silhouette_samples

import featharm as fh
from featharm.diagnostics import mixing
from featharm.exceptions import InputError


def _direct_neighbours(Z, k):
    n = Z.shape[0]
    idx = np.empty((n, k), dtype=int)
    for i in range(n):
        d = np.sqrt(((Z - Z[i]) ** 2).sum(axis=1))
        d[i] = np.inf
        idx[i] = np.lexsort((np.arange(n), d))[:k]
    return idx


@pytest.mark.parametrize("ties", [False, True])
def test_nearest_neighbours_match_a_direct_search(ties, monkeypatch):
    rng = np.random.default_rng(0)
    Z = rng.integers(0, 3, (80, 2)).astype(float) if ties else rng.normal(size=(80, 3))
    monkeypatch.setattr(mixing, "_BLOCK", 700)  # several row blocks
    idx, dist = mixing.nearest_neighbours(Z, 7)
    np.testing.assert_array_equal(idx, _direct_neighbours(Z, 7))
    np.testing.assert_allclose(dist, np.sqrt(((Z[:, None, :] - Z[idx]) ** 2).sum(axis=2)), rtol=1e-14)


def test_silhouette_matches_the_definition_and_sklearn(monkeypatch):
    rng = np.random.default_rng(1)
    codes = np.repeat([0, 1, 2, 3], [20, 15, 1, 24])
    Z = rng.normal(size=(60, 4)) + codes[:, None] * 0.7
    monkeypatch.setattr(mixing, "_BLOCK", 500)
    s = mixing.silhouette_by_label(Z, codes, 4)
    direct = np.empty(60)
    for i in range(60):
        d = np.sqrt(((Z - Z[i]) ** 2).sum(axis=1))
        own = codes == codes[i]
        if own.sum() == 1:
            direct[i] = 0.0
            continue
        a = d[own].sum() / (own.sum() - 1)
        b = min(d[codes == c].mean() for c in range(4) if c != codes[i])
        direct[i] = (b - a) / max(a, b)
    np.testing.assert_allclose(s, direct, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s, silhouette_samples(Z, codes), rtol=1e-10, atol=1e-12)


def test_kbet_pvalues_match_scipy_chisquare():
    rng = np.random.default_rng(2)
    nb = rng.integers(0, 3, (40, 12))
    freq = np.array([0.5, 0.3, 0.2])
    p = mixing.kbet_pvalues(nb, freq)
    direct = [stats.chisquare(np.bincount(row, minlength=3), 12 * freq).pvalue for row in nb]
    np.testing.assert_allclose(p, direct, rtol=1e-12)


def test_lisi_matches_a_root_found_row_by_row():
    rng = np.random.default_rng(3)
    n, k, m, perp = 50, 15, 3, 5.0
    dist = np.sort(rng.gamma(2.0, 1.0, (n, k)), axis=1)
    nb = rng.integers(0, m, (n, k))
    got = mixing.lisi(nb, dist, m, perp)
    for i in range(n):
        d2 = dist[i] ** 2

        def gap(beta):
            w = np.exp(-beta * (d2 - d2[0]))
            p = w / w.sum()
            return -(p * np.log(np.where(p > 0, p, 1.0))).sum() - np.log(perp)

        beta = optimize.brentq(gap, 1e-12, 1e4, xtol=1e-300, rtol=4 * np.finfo(float).eps)
        w = np.exp(-beta * (d2 - d2[0]))
        p = w / w.sum()
        mass = np.bincount(nb[i], weights=p, minlength=m)
        assert got[i] == pytest.approx(1.0 / (mass ** 2).sum(), rel=1e-9)


def _sim(shift, n=300, sites=3, p=30, seed=0):
    rng = np.random.default_rng(seed)
    site = np.array([f"s{c}" for c in rng.integers(0, sites, n)])
    codes = np.unique(site, return_inverse=True)[1]
    age = rng.uniform(20, 80, n)
    Y = rng.normal(size=(n, p)) + np.outer(age - 50, np.full(p, 0.02)) + shift * rng.normal(size=(sites, p))[codes]
    cov = pd.DataFrame({"site": site, "age": age}, index=[f"r{i}" for i in range(n)])
    return pd.DataFrame(Y, index=cov.index, columns=[f"f{j}" for j in range(p)]), cov


def test_metrics_separate_a_site_effect_from_none():
    X, cov = _sim(2.0)
    eff = fh.diagnostics.site_mixing(X, cov, formula="age").set_index("metric")
    X0, cov0 = _sim(0.0)
    none = fh.diagnostics.site_mixing(X0, cov0, formula="age").set_index("metric")
    assert eff.loc["silhouette", "value"] > 0.3 and abs(none.loc["silhouette", "value"]) < 0.05
    assert eff.loc["kbet_acceptance", "value"] < 0.1 and none.loc["kbet_acceptance", "value"] > 0.8
    ideal = none.loc["ilisi", "ideal"]
    assert eff.loc["ilisi", "value"] < 1.3 and none.loc["ilisi", "value"] > 0.85 * ideal
    assert list(eff.columns) == mixing.MIXING_COLUMNS[1:] and eff.loc["kbet_acceptance", "neighbours"] == 30


def test_harmonization_mixes_the_sites():
    X, cov = _sim(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xh = fh.ComBat(formula="age").fit_transform(X, cov)
    before = fh.diagnostics.site_mixing(X, cov, formula="age").set_index("metric")["value"]
    after = fh.diagnostics.site_mixing(Xh, cov, formula="age").set_index("metric")["value"]
    assert after["silhouette"] < 0.05 < before["silhouette"]
    assert after["kbet_acceptance"] > 0.7 > before["kbet_acceptance"]
    assert after["ilisi"] > before["ilisi"]


@pytest.mark.parametrize("kw", [{"neighbours": 0}, {"neighbours": 2.5}, {"perplexity": 0.5}, {"alpha": 1.0},
                                {"n_components": 0}, {"alpha": True}])
def test_bad_options_are_named(kw):
    X, cov = _sim(0.0, n=40)
    with pytest.raises(InputError, match=list(kw)[0]):
        fh.diagnostics.site_mixing(X, cov, formula="age", **kw)


def test_a_row_sample_gives_each_sampled_rows_exact_values(monkeypatch):
    # the metrics averaged over a sample of rows use each sampled row's exact neighbourhood among all rows
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 3, 90)
    Z = rng.normal(size=(90, 3)) + codes[:, None]
    rows = np.sort(rng.choice(90, 25, replace=False))
    monkeypatch.setattr(mixing, "_BLOCK", 400)
    full_s = mixing.silhouette_by_label(Z, codes, 3)
    np.testing.assert_allclose(mixing.silhouette_by_label(Z, codes, 3, rows), full_s[rows], rtol=1e-13, atol=1e-15)
    idx, dist = mixing.nearest_neighbours(Z, 6)
    idx_r, dist_r = mixing.nearest_neighbours(Z, 6, rows)
    np.testing.assert_array_equal(idx_r, idx[rows])
    res = mixing.mixing_arrays(Z, codes, 3, neighbours=6, perplexity=2, rows=rows)
    assert res["silhouette"] == pytest.approx(full_s[rows].mean(), rel=1e-12) and res["rows"] == 25


def test_the_sample_is_seeded_and_capped():
    X, cov = _sim(0.5, n=120)
    a = fh.diagnostics.site_mixing(X, cov, formula="age", sample_size=50, random_state=3)
    b = fh.diagnostics.site_mixing(X, cov, formula="age", sample_size=50, random_state=3)
    pd.testing.assert_frame_equal(a, b)
    assert (a["rows_averaged"] == 50).all()
    assert (fh.diagnostics.site_mixing(X, cov, formula="age", sample_size=500)["rows_averaged"] == 120).all()
    with pytest.raises(InputError, match="sample_size"):
        fh.diagnostics.site_mixing(X, cov, formula="age", sample_size=0)


def test_diagnose_reports_site_mixing_before_and_after():
    X, cov = _sim(1.0, n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hm = fh.ComBat(formula="age")
        Xh = hm.fit_transform(X, cov)
        res = fh.diagnostics.diagnose(X, cov, formula="age", X_harmonized=Xh, classification=False,
                                      n_permutations=0, random_state=1)
    mix = res["site_mixing"].set_index(["data", "metric"])["value"]
    direct = fh.diagnostics.site_mixing(X, cov, formula="age", random_state=1).set_index("metric")["value"]
    assert mix["raw"].to_dict() == pytest.approx(direct.to_dict(), rel=1e-12)
    assert mix["harmonized", "silhouette"] < mix["raw", "silhouette"]
    assert "site mixing: silhouette" in res.summary()
