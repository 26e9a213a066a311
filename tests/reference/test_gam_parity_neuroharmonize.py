"""ComBatGAM(compat="neuroHarmonize") against neuroHarmonize 2.5.2's GAM (``methods.md`` §2).

neuroHarmonize is a test-only reference (``pip install --no-deps neuroHarmonize==2.5.2``). Its
``harmonizationApply`` module imports nibabel at import time, which the GAM path never uses; when
nibabel is missing an empty stand-in module is registered so the import succeeds.

Data: the shared ``small_cs`` inputs (300 subjects, 5 sites, real-valued ages), first features only to
keep neuroHarmonize's per-feature statsmodels fits (55 per feature) within a few seconds. neuroHarmonize
takes covariates as numbers, so sex is coded 0/1 (``SEX`` = 1 for "M") and given to featharm the same way.
Measured: harmonized output within 1e-12 of neuroHarmonize (tolerance 1e-8; the issue asks for 1e-6).
(neuroHarmonize 2.5.2's ``ref_batch`` crashes on current numpy, ``int()`` of a 1-element array, so the
reference-batch variant is not compared here.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featharm as fh

HAVE_NH = importlib.util.find_spec("neuroHarmonize") is not None
# skipped per test (not per module), so that CI's FEATHARM_REQUIRE_REFERENCES turns a skip into a failure
pytestmark = [pytest.mark.reference,
              pytest.mark.skipif(not HAVE_NH, reason="neuroHarmonize is not installed (pip install --no-deps "
                                 "neuroHarmonize==2.5.2); the ComBat-GAM parity tests need it")]

if HAVE_NH:
    if importlib.util.find_spec("nibabel") is None:
        sys.modules.setdefault("nibabel", types.ModuleType("nibabel"))  # imported, never used by the GAM path
    from neuroHarmonize import harmonizationApply, harmonizationLearn

INPUTS = Path(__file__).parents[1] / "reference" / "inputs" / "small_cs"
ATOL = 1e-8
SEED = 7


def _data(p=5):
    X = pd.read_csv(INPUTS / "features.csv").iloc[:, :p]
    c = pd.read_csv(INPUTS / "covars.csv")
    cov = pd.DataFrame({"SITE": c["site"], "AGE": c["age"], "SEX": (c["sex"] == "M").astype(float)})
    return X, cov


@contextlib.contextmanager
def _quiet():
    """neuroHarmonize prints progress and uses numpy.matrix / statsmodels APIs that warn: silence the reference."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _nh_learn(X, cov, **kw):
    with _quiet():
        return harmonizationLearn(X.to_numpy(dtype=float), cov, **kw)


@pytest.fixture(scope="module")
def fitted():
    X, cov = _data()
    model, Ynh = _nh_learn(X, cov, smooth_terms=["AGE"], seed=SEED)
    hm = fh.ComBatGAM(batch="SITE", formula="SEX", smooth=["AGE"], compat="neuroHarmonize", random_state=SEED)
    Yfh = hm.fit_transform(X, cov)
    return X, cov, model, Ynh, hm, Yfh


def test_harmonized_matches(fitted):
    X, cov, model, Ynh, hm, Yfh = fitted
    assert np.abs(Yfh.to_numpy() - Ynh).max() <= ATOL


def test_estimates_match(fitted):
    X, cov, model, Ynh, hm, Yfh = fitted
    B = np.vstack([hm.batch_coef_, hm.beta_, hm.spline_coef_])
    np.testing.assert_allclose(B, model["B_hat"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(hm.sigma_ ** 2, model["var_pooled"].ravel(), rtol=1e-10)
    np.testing.assert_allclose(hm.gamma_star_, model["gamma_star"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(hm.delta_star_, model["delta_star"], rtol=0, atol=1e-8)
    # the knots are neuroHarmonize's (statsmodels BSplines df=10, degree=3)
    np.testing.assert_array_equal(hm.smooth_bases_[0].knots,
                                  model["smooth_model"]["bsplines_constructor"].smoothers[0].knots)


def test_seed_is_what_matters(fitted):
    """Another seed picks other penalties in neuroHarmonize and in featharm alike, and still agrees."""
    X, cov, model, Ynh, hm, Yfh = fitted
    _, Ynh2 = _nh_learn(X, cov, smooth_terms=["AGE"], seed=SEED + 1)
    hm2 = fh.ComBatGAM(batch="SITE", formula="SEX", smooth="AGE", compat="neuroHarmonize", random_state=SEED + 1)
    Y2 = hm2.fit_transform(X, cov).to_numpy()
    assert np.abs(Y2 - Ynh2).max() <= ATOL
    assert not np.array_equal(hm2.lambda_.to_numpy(), hm.lambda_.to_numpy())  # the seed does change alpha


def test_apply_matches_harmonization_apply(fitted):
    """Out of sample: fit on 200 subjects, apply to the others (ages inside the training range)."""
    X, cov, *_ = fitted
    train = np.arange(200)
    test = np.arange(200, len(X))
    test = test[(cov.AGE.iloc[test] >= cov.AGE.iloc[train].min()) & (cov.AGE.iloc[test] <= cov.AGE.iloc[train].max())]
    model, _ = _nh_learn(X.iloc[train], cov.iloc[train], smooth_terms=["AGE"], seed=SEED)
    with _quiet():
        Ynh = harmonizationApply(X.iloc[test].to_numpy(dtype=float), cov.iloc[test], model)
    hm = fh.ComBatGAM(batch="SITE", formula="SEX", smooth="AGE", compat="neuroHarmonize", random_state=SEED)
    hm.fit(X.iloc[train], cov.iloc[train])
    assert np.abs(hm.transform(X.iloc[test], cov.iloc[test]).to_numpy() - Ynh).max() <= ATOL


def test_converted_model(fitted, tmp_path):
    """from_neuroharmonize: neuroHarmonize's own model, as a featharm model, reproduces its output."""
    X, cov, model, Ynh, hm, Yfh = fitted
    conv = fh.ComBatGAM.from_neuroharmonize(model, feature_names=list(X.columns))
    assert conv.compat == "neuroHarmonize" and conv.smooth_terms_ == ["AGE"]
    assert np.abs(conv.transform(X, cov).to_numpy() - Ynh).max() <= ATOL
    conv.save(tmp_path / "nh.fhm")
    back = fh.load_model(tmp_path / "nh.fhm")
    assert np.abs(back.transform(X, cov).to_numpy() - Ynh).max() <= ATOL


def test_converter_rejects_linear_model():
    X, cov = _data(p=3)
    model, _ = _nh_learn(X, cov)
    with pytest.raises(fh.exceptions.InputError, match="no smooth terms"):
        fh.ComBatGAM.from_neuroharmonize(model)
    with pytest.raises(fh.exceptions.InputError, match="lacks the key"):
        fh.ComBatGAM.from_neuroharmonize({"B_hat": 1})


def test_two_smooth_terms_match():
    """Two smooth terms: neuroHarmonize searches the 11 x 11 product grid of penalties (one shuffle each)."""
    X, cov = _data(p=2)
    X, cov = X.iloc[:150], cov.iloc[:150].assign(BMI=np.round(np.random.default_rng(0).normal(25, 4, 150), 3))
    model, Ynh = _nh_learn(X, cov, smooth_terms=["AGE", "BMI"], seed=3)
    hm = fh.ComBatGAM(batch="SITE", formula="SEX", smooth=["AGE", "BMI"], compat="neuroHarmonize", random_state=3)
    assert np.abs(hm.fit_transform(X, cov).to_numpy() - Ynh).max() <= ATOL
    conv = fh.ComBatGAM.from_neuroharmonize(model, feature_names=list(X.columns))
    assert conv.smooth_terms_ == ["AGE", "BMI"]
    assert np.abs(conv.transform(X, cov).to_numpy() - Ynh).max() <= ATOL
