"""ComBat-GAM from per-batch sufficient statistics equals ComBatGAM fitted on the rows (``docs/methods.md`` §1.9, §2).

The spline basis is frozen from the covariates first (:func:`freeze_gam_design`); the rows are summarized with
the spline columns among the covariates, over random row blocks merged in a random order; the smoothing
parameter of every feature is then chosen by REML/GCV from the within-batch cross-products. Every stored array
(smoothing parameters and effective degrees of freedom included) and the harmonized output must equal the
in-memory ``ComBatGAM.fit`` to 1e-10 (relative), on volume-like features (mean ~1e4, SD ~1e2), complete and
with NaN cells (each feature on its observed rows). Measured: ≤ 1.1e-12 complete, ≤ 4.5e-12 with NaN cells.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import featharm
from featharm.exceptions import InputError
from featharm.models._gam_from_stats import freeze_gam_design
from test_from_statistics import make_volumes, output_error, stored_errors, summarize

TOL = 1e-10

OPTIONS = {
    "reml": {},
    "gcv": {"method": "GCV"},
    "shared_smoothing": {"shared_smoothing": True},
    "gcv_shared": {"method": "GCV", "shared_smoothing": True},
    "nonparametric": {"parametric": False},
    "mean_only": {"mean_only": True},
    "eb_false": {"eb": False},
    "ref_batch": {"ref_batch": "site1"},
    "two_smooth_terms": {"smooth": ["age", "bmi"], "formula": "sex"},
    "smooth_bounds": {"smooth_bounds": {"age": (10, 95)}},
    "df_7": {"df": 7},
}


def data(seed: int, n_sites: int = 4, nan_fraction: float = 0.0):
    X, cov = make_volumes(seed, n_sites, nan_fraction=nan_fraction)
    rng = np.random.default_rng(seed + 100)
    cov = cov.assign(bmi=rng.normal(25, 4, len(cov)))
    # a curved age effect, so the smoothing parameters are finite and differ between features
    X = X + np.outer(np.sin((cov["age"].to_numpy() - 20) / 12), X.std().to_numpy() * rng.uniform(0.2, 1.0, X.shape[1]))
    return X, cov


def fit_both(X, cov, options, seed):
    params = dict(batch="site", formula="sex", smooth=["age"])
    params.update(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", featharm.exceptions.FeatharmWarning)
        model = featharm.ComBatGAM(**params)
        out = model.fit_transform(X, cov)
        frozen = freeze_gam_design(featharm.ComBatGAM(**params), cov)
        stats = summarize(frozen, X.to_numpy(), seed)
        fitted = featharm.ComBatGAM.from_statistics(stats, batches=frozen.batches, design=frozen.design,
                                                    bases=frozen.bases, feature_names=X.columns, **params)
        out2 = fitted.transform(X, cov)
    return model, out, fitted, out2


@pytest.mark.parametrize("name", list(OPTIONS))
def test_equals_in_memory_fit(name):
    X, cov = data(11)
    model, out, fitted, out2 = fit_both(X, cov, OPTIONS[name], seed=5)
    assert [b.to_dict() for b in fitted.smooth_bases_] == [b.to_dict() for b in model.smooth_bases_]
    errors = stored_errors(fitted, model)
    assert {"smoothing", "edf", "spline_coef"} <= set(errors)
    assert max(errors.values()) <= TOL, errors
    assert output_error(out2, out, model.sigma_.to_numpy()) <= TOL
    assert list(fitted.smooth_terms_) == list(model.smooth_terms_)
    # the smoothing parameters are real choices: finite, and per feature they differ
    lam = model.lambda_.to_numpy()
    assert np.isfinite(lam).all()
    assert (lam.max() > lam.min()) != bool(OPTIONS[name].get("shared_smoothing"))


@pytest.mark.parametrize("name", list(OPTIONS))
def test_equals_in_memory_fit_with_missing_values(name):
    X, cov = data(13, nan_fraction=0.06)
    X.iloc[:40, -1] = np.nan  # a feature missing on many rows, a batch or two with few of its values left
    model, out, fitted, out2 = fit_both(X, cov, OPTIONS[name], seed=9)
    assert "n_obs" in model._arr
    errors = stored_errors(fitted, model)
    assert max(errors.values()) <= TOL, errors
    assert output_error(out2, out, model.sigma_.to_numpy()) <= TOL


def test_block_order_does_not_matter():
    X, cov = data(3, n_sites=3)
    _, _, a, _ = fit_both(X, cov, {}, seed=1)
    _, _, b, _ = fit_both(X, cov, {}, seed=2)
    assert max(stored_errors(a, b).values()) <= TOL


def test_saved_model_from_statistics_round_trips(tmp_path):
    X, cov = data(7, n_sites=3)
    _, out, fitted, _ = fit_both(X, cov, {}, seed=0)
    path = tmp_path / "gam.fhm"
    fitted.save(path)
    loaded = featharm.load_model(path)
    np.testing.assert_array_equal(loaded.transform(X, cov).to_numpy(), fitted.transform(X, cov).to_numpy())


def _frozen_stats(X, cov, **params):
    model = featharm.ComBatGAM(batch="site", formula="sex", smooth=["age"], **params)
    frozen = freeze_gam_design(model, cov)
    return frozen, summarize(frozen, X.to_numpy(), 0)


def test_neuroharmonize_compat_is_refused():
    X, cov = data(5)
    frozen, stats = _frozen_stats(X, cov)
    with pytest.raises(InputError, match="k-fold"):
        featharm.ComBatGAM.from_statistics(stats, batches=frozen.batches, design=frozen.design, bases=frozen.bases,
                                           feature_names=X.columns, batch="site", formula="sex", smooth=["age"],
                                           compat="neuroHarmonize")


def test_statistics_without_the_spline_columns_are_refused():
    X, cov = data(5)
    frozen, _ = _frozen_stats(X, cov)
    q = len(frozen.design.columns)
    stats = summarize(type(frozen)(frozen.batches, frozen.design, frozen.codes, frozen.X[:, :q], frozen.bases),
                      X.to_numpy(), 0)
    with pytest.raises(InputError, match="spline columns"):
        featharm.ComBatGAM.from_statistics(stats, batches=frozen.batches, design=frozen.design, bases=frozen.bases,
                                           feature_names=X.columns, batch="site", formula="sex", smooth=["age"])


def test_bases_of_other_terms_are_refused():
    X, cov = data(5)
    frozen, stats = _frozen_stats(X, cov)
    with pytest.raises(InputError, match="smooth terms"):
        featharm.ComBatGAM.from_statistics(stats, batches=frozen.batches, design=frozen.design, bases=frozen.bases,
                                           feature_names=X.columns, batch="site", formula="sex", smooth=["bmi"])
