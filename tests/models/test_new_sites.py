"""Sites not seen at fit time: ``transform(..., new_sites="estimate")`` (methods.md §5.7).

A new site is standardized against the frozen model, its location/scale and EB posterior are estimated
from its own rows, and it is adjusted; rows of sites seen at fit come out exactly as without it.
"""

from __future__ import annotations

import numpy as np
import pytest

import featharm
from featharm.exceptions import BatchError, InputError, UnseenBatchError

from test_properties import make_data

FAMILIES = {
    "combat": lambda **kw: featharm.ComBat(batch="site", formula="age + sex", **kw),
    "combat_nonparametric": lambda **kw: featharm.ComBat(batch="site", formula="age + sex", parametric=False, **kw),
    "combat_mean_only": lambda **kw: featharm.ComBat(batch="site", formula="age + sex", mean_only=True, **kw),
    "combat_eb_false": lambda **kw: featharm.ComBat(batch="site", formula="age + sex", eb=False, **kw),
}


@pytest.fixture(scope="module")
def data():
    return make_data(0, sizes=(80, 120, 60, 90, 70), n_features=30)


def _split(cov, held):
    return (cov["site"] != held).to_numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_seen_rows_unchanged_and_new_site_adjusted(family, data):
    X, cov = data
    tr = _split(cov, "siteC")
    model = FAMILIES[family]().fit(X[tr], cov[tr])
    seen = model.transform(X[tr], cov[tr])
    out = model.transform(X, cov, new_sites="estimate")
    assert out.index.equals(X.index) and list(out.columns) == list(X.columns)
    # rows of seen sites: bit-identical to transform without the new site
    assert np.array_equal(out[tr].to_numpy(), seen.to_numpy())
    # the new site is changed, and the model is not (no new batch, same estimates)
    assert not np.allclose(out[~tr].to_numpy(), X[~tr].to_numpy())
    assert list(model.batches_) == ["siteA", "siteB", "siteD", "siteE"]
    assert np.array_equal(model.transform(X[tr], cov[tr]).to_numpy(), seen.to_numpy())


def test_new_site_estimates_follow_the_frozen_model(data):
    """eb=False: the new site's re-standardized output has mean 0 and variance 1 against the frozen model."""
    X, cov = data
    tr = _split(cov, "siteB")
    model = featharm.ComBat(batch="site", formula="age + sex", eb=False).fit(X[tr], cov[tr])
    out = model.transform(X, cov, new_sites="estimate")
    Xc = model.design_.transform(cov[~tr])
    z = (out[~tr].to_numpy() - model.alpha_.to_numpy() - Xc @ model.beta_.to_numpy()) / model.sigma_.to_numpy()
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.var(axis=0, ddof=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("held", ["siteA", "siteC", "siteE"])
def test_estimate_matches_fit_with_the_site_included(held, data):
    """Fit on all sites vs fit without one site and estimate it at apply time.

    With a reference site the harmonization target does not depend on which other sites are in the fit,
    so the two results for the held-out site differ only through its EB prior and the covariate
    coefficients (estimated without its rows): a small fraction of the residual SD. Without a reference
    the pooled target (site-size-weighted grand mean and pooled variance) itself moves; then the held-out
    site moves about as much as the sites that were in both fits.
    """
    X, cov = data
    tr = _split(cov, held)
    ref = "siteB"
    full = featharm.ComBat(batch="site", formula="age + sex", ref_batch=ref).fit(X, cov)
    part = featharm.ComBat(batch="site", formula="age + sex", ref_batch=ref).fit(X[tr], cov[tr])
    d = np.abs(part.transform(X, cov, new_sites="estimate")[~tr].to_numpy()
               - full.transform(X, cov)[~tr].to_numpy()) / full.sigma_.to_numpy()
    assert d.mean() < 0.05 and d.max() < 0.3, (d.mean(), d.max())

    full = featharm.ComBat(batch="site", formula="age + sex").fit(X, cov)
    part = featharm.ComBat(batch="site", formula="age + sex").fit(X[tr], cov[tr])
    out_full, out_part = full.transform(X, cov), part.transform(X, cov, new_sites="estimate")
    sig = full.sigma_.to_numpy()
    d_new = np.abs(out_part[~tr].to_numpy() - out_full[~tr].to_numpy()) / sig
    d_seen = np.abs(out_part[tr].to_numpy() - out_full[tr].to_numpy()) / sig
    assert d_new.mean() < 1.6 * d_seen.mean() + 0.02, (d_new.mean(), d_seen.mean())


def test_default_is_an_unseen_batch_error(data):
    X, cov = data
    tr = _split(cov, "siteE")
    model = featharm.ComBat(batch="site", formula="age + sex").fit(X[tr], cov[tr])
    with pytest.raises(UnseenBatchError, match="'siteE' \\(70 rows\\)"):
        model.transform(X, cov)
    with pytest.raises(InputError, match="new_sites"):
        model.transform(X, cov, new_sites="guess")


def test_too_few_subjects_names_site_and_count(data):
    X, cov = data
    tr = _split(cov, "siteE")
    model = featharm.ComBat(batch="site", formula="age + sex").fit(X[tr], cov[tr])
    few = np.flatnonzero(~tr)[:3]
    rows = np.concatenate([np.flatnonzero(tr)[:20], few])
    with pytest.raises(BatchError, match=r"'siteE' \(3 rows\).*min_new_site_size=5"):
        model.transform(X.iloc[rows], cov.iloc[rows], new_sites="estimate")
    out = model.transform(X.iloc[rows], cov.iloc[rows], new_sites="estimate", min_new_site_size=3)
    assert np.isfinite(out.to_numpy()).all()
    for bad in (1, 2.5, True):
        with pytest.raises(InputError, match="min_new_site_size"):
            model.transform(X.iloc[rows], cov.iloc[rows], new_sites="estimate", min_new_site_size=bad)


def test_two_new_sites_are_estimated_separately(data):
    """Each new site gets its own estimates: harmonizing them together or one at a time is the same."""
    X, cov = data
    tr = ~cov["site"].isin(["siteA", "siteD"]).to_numpy()
    model = featharm.ComBat(batch="site", formula="age + sex").fit(X[tr], cov[tr])
    both = model.transform(X, cov, new_sites="estimate")
    for s in ("siteA", "siteD"):
        r = (cov["site"] == s).to_numpy()
        alone = model.transform(X[r], cov[r], new_sites="estimate")
        np.testing.assert_allclose(both[r].to_numpy(), alone.to_numpy(), rtol=0, atol=1e-12)


def test_new_sites_after_save_and_load(data, tmp_path):
    X, cov = data
    tr = _split(cov, "siteA")
    model = featharm.ComBat(batch="site", formula="age + sex").fit(X[tr], cov[tr])
    model.save(tmp_path / "m.fhm")
    loaded = featharm.load_model(tmp_path / "m.fhm")
    np.testing.assert_array_equal(loaded.transform(X, cov, new_sites="estimate").to_numpy(),
                                  model.transform(X, cov, new_sites="estimate").to_numpy())


def test_gam_new_site(data):
    """ComBat-GAM inherits the estimation (its spline part is the preserved design of the base class)."""
    X, cov = data
    tr = _split(cov, "siteC")
    model = featharm.ComBatGAM(batch="site", formula="sex", smooth=["age"], extrapolate="linear").fit(X[tr], cov[tr])
    out = model.transform(X, cov, new_sites="estimate")
    assert np.array_equal(out[tr].to_numpy(), model.transform(X[tr], cov[tr]).to_numpy())
    full = featharm.ComBatGAM(batch="site", formula="sex", smooth=["age"]).fit(X, cov).transform(X, cov)
    sd = full.std().to_numpy()
    d_new = np.mean(np.abs(out[~tr].to_numpy() - full[~tr].to_numpy()) / sd)
    d_seen = np.mean(np.abs(out[tr].to_numpy() - full[tr].to_numpy()) / sd)
    assert d_new < 1.6 * d_seen + 0.02, (d_new, d_seen)
