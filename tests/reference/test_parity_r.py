"""Parity of featharm's ComBat with the R implementations (neuroCombat (R) 1.0.14, ComBatFamily 0.2.1).

The reference numbers are in ``tests/reference`` (see its README.md): R 4.2.2 on the simulated data
``inputs/small_cs``, which has 300 subjects, 20 features and 5 unbalanced sites, with the model
``~ age + sex`` and ``site`` as the batch. The layout follows statsmodels: one check mixin holds a
named tolerance per quantity, and each reference folder has one class that says which implementation
and options produced its numbers.

The ages in ``covars.csv`` are real-valued, and the R packages compute in float64. So featharm runs
without ``compat`` here: the float32 rounding of covariates is a quirk of the *Python* neuroCombat and
does not apply to R.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featharm

pytestmark = pytest.mark.reference

REFERENCE = Path(__file__).parents[1] / "reference"
INPUTS = REFERENCE / "inputs" / "small_cs"
OUTPUTS = REFERENCE / "outputs"

PRIOR_COLUMNS = ("gamma_bar", "tau2", "a_prior", "b_prior")


def load_small_cs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features and covariates of ``small_cs``, both indexed by ``subject_id`` (rows in file order)."""
    cov = pd.read_csv(INPUTS / "covars.csv").set_index("subject_id")
    X = pd.read_csv(INPUTS / "features.csv")
    assert len(X) == len(cov)
    X.index = cov.index  # the two files have the same rows in the same order
    return X, cov


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))


class CheckComBatR:
    """Checks shared by every R reference. Subclasses set ``folder`` and ``options``."""

    folder: str
    options: dict = {}
    ref_batch: str | None = None

    # named tolerances (absolute), one per quantity; methods.md §1.6 item 7 and §8 give atol 1e-9
    atol_harmonized = 1e-9
    atol_gamma_hat = 1e-9
    atol_delta_hat = 1e-9
    atol_gamma_star = 1e-9
    atol_delta_star = 1e-9
    atol_sigma = 1e-9
    atol_gamma_bar = 1e-9
    atol_tau2 = 1e-9
    atol_a_prior = 1e-9
    atol_b_prior = 1e-9

    @classmethod
    def setup_class(cls):
        cls.X, cls.cov = load_small_cs()
        cls.model = featharm.ComBat(batch="site", formula="age + sex", priors="pool", **cls.options)  # R pools all features
        cls.harmonized = cls.model.fit_transform(cls.X, cls.cov)
        cls.out = OUTPUTS / cls.folder

    # -- helpers ---------------------------------------------------------------------------------
    def _read_table(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.out / f"{name}.csv", index_col=0)

    def _check_table(self, name: str) -> None:
        expected = self._read_table(name)
        actual = getattr(self.model, name + "_")
        # same batch rows and feature columns, in the same (sorted) order
        assert list(map(str, actual.index)) == list(expected.index)
        assert list(actual.columns) == list(expected.columns)
        atol = getattr(self, "atol_" + name)
        print(f"{self.folder} {name}: max |featharm - R| = {_max_abs(actual, expected):.2e}")
        np.testing.assert_allclose(actual.to_numpy(), expected.to_numpy(), rtol=0, atol=atol,
                                   err_msg=f"{name} differs from {self.folder}")

    # -- the checks ------------------------------------------------------------------------------
    def test_meta(self):
        meta = json.loads((self.out / "meta.json").read_text())
        assert list(meta["batches"]) == list(self.model.batches_)
        assert meta["ref_batch"] == self.ref_batch

    def test_harmonized(self):
        expected = pd.read_csv(self.out / "harmonized.csv")
        assert self.harmonized.shape == expected.shape
        assert list(self.harmonized.columns) == list(expected.columns)
        assert self.harmonized.index.equals(self.X.index)
        print(f"{self.folder} harmonized: max |featharm - R| = {_max_abs(self.harmonized, expected):.2e}")
        np.testing.assert_allclose(self.harmonized.to_numpy(), expected.to_numpy(), rtol=0,
                                   atol=self.atol_harmonized)

    def test_gamma_hat(self):
        self._check_table("gamma_hat")

    def test_delta_hat(self):
        self._check_table("delta_hat")

    def test_gamma_star(self):
        self._check_table("gamma_star")

    def test_delta_star(self):
        self._check_table("delta_star")

    def test_sigma(self):
        expected = pd.read_csv(self.out / "sigma.csv", index_col=0)["sigma"]
        actual = self.model.sigma_
        assert list(actual.index) == list(expected.index)
        print(f"{self.folder} sigma: max |featharm - R| = {_max_abs(actual, expected):.2e}")
        np.testing.assert_allclose(actual.to_numpy(), expected.to_numpy(), rtol=0, atol=self.atol_sigma)

    def test_priors(self):
        expected = pd.read_csv(self.out / "priors.csv", index_col=0)
        actual = self.model.priors_
        assert list(map(str, actual.index)) == list(expected.index)
        compared = 0
        for col in PRIOR_COLUMNS:
            a = actual[col].to_numpy(dtype=float)
            e = expected[col].to_numpy(dtype=float)
            both = np.isfinite(a) & np.isfinite(e)  # R: Inf a/b with mean.only; featharm: NaN (see below)
            if both.any():
                print(f"{self.folder} {col}: max |featharm - R| = {_max_abs(a[both], e[both]):.2e}")
                np.testing.assert_allclose(a[both], e[both], rtol=0, atol=getattr(self, "atol_" + col),
                                           err_msg=f"prior {col} differs from {self.folder}")
                compared += int(both.sum())
        assert compared > 0


class TestNeuroCombatParametric(CheckComBatR):
    # neuroCombat (R) 1.0.14, neuroCombat(dat, batch = site, mod = model.matrix(~ age + sex)):
    # parametric EB, eb = TRUE, mean.only = FALSE, ref.batch = NULL
    folder = "combat__neurocombat"
    options = {}


class TestComBatFamily(CheckComBatR):
    # ComBatFamily 0.2.1, comfam(data, bat = site, covar = (age, sex), model = lm, formula = y ~ age + sex):
    # parametric EB, the same model as neuroCombat; priors recomputed from its gamma_hat/delta_hat
    folder = "combat__comfamily"
    options = {}


class TestNeuroCombatNonParametric(CheckComBatR):
    # neuroCombat (R) 1.0.14, mod = ~ age + sex, parametric = FALSE (int.eprior); priors are the
    # method-of-moments ones the package still computes
    folder = "combat_nonparam__neurocombat"
    options = {"parametric": False}


class TestNeuroCombatMeanOnly(CheckComBatR):
    # neuroCombat (R) 1.0.14, mod = ~ age + sex, mean.only = TRUE (parametric, postmean with n = 1);
    # R reports a.prior = b.prior = Inf
    folder = "combat_meanonly__neurocombat"
    options = {"mean_only": True}

    def test_scale_priors_nan(self):
        # featharm has no scale prior in mean-only mode and reports NaN; R's are infinite
        pri = self.model.priors_
        assert pri["a_prior"].isna().all() and pri["b_prior"].isna().all()
        assert np.isfinite(pri["gamma_bar"]).all() and np.isfinite(pri["tau2"]).all()
        expected = pd.read_csv(self.out / "priors.csv", index_col=0)
        assert np.isinf(expected["a_prior"]).all() and np.isinf(expected["b_prior"]).all()

    def test_no_scale_adjustment(self):
        assert (self.model.delta_hat_.to_numpy() == 1.0).all()
        assert (self.model.delta_star_.to_numpy() == 1.0).all()


class TestNeuroCombatNoEB(CheckComBatR):
    # neuroCombat (R) 1.0.14, mod = ~ age + sex, eb = FALSE (gamma/delta star = hat); no priors.csv
    folder = "combat_noeb__neurocombat"
    options = {"eb": False}

    def test_priors(self):
        # the R run has no priors to compare; with eb = FALSE featharm must not shrink: star == hat exactly
        assert not (self.out / "priors.csv").exists()
        assert np.array_equal(self.model.gamma_star_.to_numpy(), self.model.gamma_hat_.to_numpy())
        assert np.array_equal(self.model.delta_star_.to_numpy(), self.model.delta_hat_.to_numpy())


class TestNeuroCombatRefBatch(CheckComBatR):
    # neuroCombat (R) 1.0.14, mod = ~ age + sex, ref.batch = "site01": parametric EB, the reference
    # site's rows come back unchanged and sigma comes from the reference rows only
    folder = "combat_ref__neurocombat"
    options = {"ref_batch": "site01"}
    ref_batch = "site01"

    def test_reference_rows_bit_identical(self):
        rows = (self.cov["site"] == "site01").to_numpy()
        assert rows.sum() == 42
        assert np.array_equal(self.harmonized.to_numpy()[rows], self.X.to_numpy()[rows])
        # ... and the R output has the reference rows unchanged too (the files agree with each other)
        expected = pd.read_csv(self.out / "harmonized.csv").to_numpy()
        np.testing.assert_allclose(expected[rows], self.X.to_numpy()[rows], rtol=0, atol=1e-12)

    def test_reference_batch_priors_nan(self):
        # R's priors for the reference batch come from its ~1e-14 gamma_hat and mean nothing; featharm: NaN
        pri = self.model.priors_
        assert pri.loc["site01"].isna().all()
        assert np.isfinite(pri.drop(index="site01").to_numpy()).all()
        assert self.model.gamma_star_.loc["site01"].eq(0.0).all()
        assert self.model.delta_star_.loc["site01"].eq(1.0).all()
