"""Parity of featharm's ComBat with missing values (NaN cells) against R (``docs/methods.md`` §1.8).

Reference numbers (``tests/reference``, see its README.md): R 4.2.2, neuroCombat (R) 1.0.14 and sva 3.46.0
on ``inputs/small_cs_na``, which is ``small_cs`` (300 subjects, 20 features, 5 sites, ``~ age + sex``) with
196 cells set missing: 180 at random and two subjects missing 8 consecutive features each; every site keeps
at least 35 observed values of every feature. ``harmonized.csv`` of these folders is written with 11
significant digits (rounding below 5e-11), the other tables with 15.

``inputs/small_cs_na_empty`` adds a site with no value of a feature (site03 x ``roi005_thickness``) and a
site with one (site02 x ``roi007_thickness``): every neuroCombat and sva setting stops there
(``outputs/combat_na_empty__*/meta.json``); featharm goes on as §1.8 says, tested in
``tests/models/test_missing.py`` and below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featharm
from featharm.exceptions import MissingValueWarning
from test_parity_r import OUTPUTS, CheckComBatR

pytestmark = pytest.mark.reference

INPUTS = Path(__file__).parent / "inputs"


def load_small_cs_na(name: str = "small_cs_na") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features (NaN where missing) and covariates of ``inputs/<name>``, indexed by ``subject_id``."""
    cov = pd.read_csv(INPUTS / name / "covars.csv").set_index("subject_id")
    X = pd.read_csv(INPUTS / name / "features.csv")
    X.index = cov.index
    mask = pd.read_csv(INPUTS / name / "mask.csv")
    assert np.array_equal(X.isna().to_numpy(), mask.to_numpy() == 1)  # the files agree with each other
    return X, cov


def _max_abs(a, b) -> float:
    return float(np.nanmax(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))


class CheckComBatNA(CheckComBatR):
    """The checks of ``CheckComBatR`` on ``small_cs_na``, plus "NaN in, NaN out"."""

    @classmethod
    def setup_class(cls):
        cls.X, cls.cov = load_small_cs_na()
        cls.model = featharm.ComBat(batch="site", formula="age + sex", priors="pool", **cls.options)  # R pools all features
        cls.harmonized = cls.model.fit_transform(cls.X, cls.cov)
        cls.out = OUTPUTS / cls.folder

    def _check_table(self, name: str) -> None:
        expected = self._read_table(name)
        actual = getattr(self.model, name + "_")
        assert list(map(str, actual.index)) == list(expected.index)
        assert list(actual.columns) == list(expected.columns)
        print(f"{self.folder} {name}: max |featharm - R| = {_max_abs(actual, expected):.2e}")
        np.testing.assert_allclose(actual.to_numpy(), expected.to_numpy(), rtol=0, atol=getattr(self, "atol_" + name),
                                   equal_nan=False, err_msg=f"{name} differs from {self.folder}")

    def test_harmonized(self):
        expected = pd.read_csv(self.out / "harmonized.csv")
        assert list(self.harmonized.columns) == list(expected.columns)
        assert self.harmonized.index.equals(self.X.index)
        h, e = self.harmonized.to_numpy(), expected.to_numpy()
        missing = self.X.isna().to_numpy()
        assert missing.sum() == 196
        assert np.array_equal(np.isnan(h), missing)  # NaN exactly where the input is NaN ...
        assert np.array_equal(np.isnan(e), missing)  # ... as in R
        assert np.isfinite(h[~missing]).all()
        print(f"{self.folder} harmonized: max |featharm - R| = {_max_abs(h, e):.2e}")
        np.testing.assert_allclose(h[~missing], e[~missing], rtol=0, atol=self.atol_harmonized)

    def test_meta(self):
        meta = json.loads((self.out / "meta.json").read_text())
        assert meta["input"] == "small_cs_na" and meta["status"] == "ok"
        assert list(meta["batches"]) == list(self.model.batches_)
        assert meta["ref_batch"] == self.ref_batch
        assert meta["na"]["n_na_in"] == meta["na"]["n_na_out"] == 196 and meta["na"]["new_na_cells"] == 0

    def test_observed_counts(self):
        n_obs = self.model.n_obs_
        expected = self.X.notna().groupby(self.cov["site"]).sum()
        assert np.array_equal(n_obs.to_numpy(), expected.to_numpy())
        assert (n_obs.to_numpy() >= 35).all()


class TestNeuroCombatNAParametric(CheckComBatNA):
    # neuroCombat (R) 1.0.14, neuroCombat(dat, batch = site, mod = model.matrix(~ age + sex)) on small_cs_na:
    # parametric EB with n = the observed values of each site x feature
    folder = "combat_na__neurocombat"
    options = {}

    def test_iterations(self):
        # R's checks count 4, 3, 3, 4, 4 parametric EB iterations per site (meta.json, by hand)
        meta = json.loads((self.out / "meta.json").read_text())
        expected = meta["checks"]["EB_iterations_per_site_by_hand"]
        assert self.model.n_iter_.to_dict() == expected


class TestNeuroCombatNANonParametric(CheckComBatNA):
    # neuroCombat (R) 1.0.14, parametric = FALSE: the likelihood of a site x feature over its observed cells
    folder = "combat_na_nonparam__neurocombat"
    options = {"parametric": False}


class TestNeuroCombatNAMeanOnly(CheckComBatNA):
    # neuroCombat (R) 1.0.14, mean.only = TRUE (postmean with n = 1); R reports a.prior = b.prior = Inf
    folder = "combat_na_meanonly__neurocombat"
    options = {"mean_only": True}

    def test_no_scale_adjustment(self):
        assert (self.model.delta_star_.to_numpy() == 1.0).all()


class TestNeuroCombatNANoEB(CheckComBatNA):
    # neuroCombat (R) 1.0.14, eb = FALSE: gamma*, delta* are the estimates; no priors.csv
    folder = "combat_na_noeb__neurocombat"
    options = {"eb": False}

    def test_priors(self):
        assert not (self.out / "priors.csv").exists()

    def test_star_is_hat(self):
        assert np.array_equal(self.model.gamma_star_.to_numpy(), self.model.gamma_hat_.to_numpy())
        assert np.array_equal(self.model.delta_star_.to_numpy(), self.model.delta_hat_.to_numpy())


class TestNeuroCombatNARefBatch(CheckComBatNA):
    # neuroCombat (R) 1.0.14, ref.batch = "site01": sigma from the reference site's observed cells over their
    # count; the reference rows come back as given, NA included
    folder = "combat_na_ref__neurocombat"
    options = {"ref_batch": "site01"}
    ref_batch = "site01"

    def test_reference_rows_as_given(self):
        rows = (self.cov["site"] == "site01").to_numpy()
        assert np.array_equal(self.harmonized.to_numpy()[rows], self.X.to_numpy()[rows], equal_nan=True)
        assert np.isnan(self.X.to_numpy()[rows]).any()  # ... NaN included

    def test_priors(self):
        # R's priors of the reference batch come from its ~1e-14 gamma_hat and mean nothing; featharm: NaN
        expected = pd.read_csv(self.out / "priors.csv", index_col=0).drop(index="site01")
        actual = self.model.priors_
        assert actual.loc["site01"].isna().all()
        for col in ("gamma_bar", "tau2", "a_prior", "b_prior"):
            print(f"{self.folder} {col}: max |featharm - R| = {_max_abs(actual[col].drop('site01'), expected[col]):.2e}")
            np.testing.assert_allclose(actual[col].drop("site01").to_numpy(), expected[col].to_numpy(), rtol=0,
                                       atol=getattr(self, "atol_" + col))

    def test_gamma_hat(self):
        # the reference row: featharm exactly 0, R ~1e-14 (its own rounding); the other rows as everywhere
        self._check_table("gamma_hat")
        assert (self.model.gamma_hat_.loc["site01"] == 0.0).all()


class TestSvaNA:
    """sva 3.46.0 ``ComBat(dat, batch, mod)`` (par.prior = TRUE) on small_cs_na: only the matrix is returned.

    On its missing-value path sva divides the pooled residual sum of squares by n_v - 1 (neuroCombat by
    n_v): ``compat="sva"``. The two differ by up to 2.9e-3 here."""

    folder = "combat_na__sva"

    @classmethod
    def setup_class(cls):
        cls.X, cls.cov = load_small_cs_na()
        cls.expected = pd.read_csv(OUTPUTS / cls.folder / "harmonized.csv").to_numpy()

    def test_harmonized(self):
        h = featharm.ComBat(batch="site", formula="age + sex", compat="sva").fit_transform(self.X, self.cov)
        missing = self.X.isna().to_numpy()
        assert np.array_equal(np.isnan(h.to_numpy()), missing)
        print(f"{self.folder} harmonized: max |featharm - R| = {_max_abs(h, self.expected):.2e}")
        np.testing.assert_allclose(h.to_numpy()[~missing], self.expected[~missing], rtol=0, atol=1e-9)

    def test_default_is_neurocombat_not_sva(self):
        h = featharm.ComBat(batch="site", formula="age + sex", priors="pool").fit_transform(self.X, self.cov).to_numpy()
        assert 1e-3 < _max_abs(h, self.expected) < 5e-3  # README: up to 2.9e-3

    def test_sva_changes_nothing_without_nan(self):
        X = self.X.fillna(1.0)
        a = featharm.ComBat(batch="site", formula="age + sex", compat="sva").fit_transform(X, self.cov)
        b = featharm.ComBat(batch="site", formula="age + sex", priors="pool").fit_transform(X, self.cov)
        assert np.array_equal(a.to_numpy(), b.to_numpy())


# ------------------------------------------------------------------------------------------ where R stops
EMPTY_SETTINGS = {"combat": {}, "combat_nonparam": {"parametric": False}, "combat_meanonly": {"mean_only": True},
                  "combat_ref": {"ref_batch": "site01"}}


def test_r_stops_on_small_cs_na_empty():
    """The R references record their failure; the settings featharm runs are those four (eb=False is an error)."""
    for impl in ("neurocombat", "sva"):
        meta = json.loads((OUTPUTS / f"combat_na_empty__{impl}" / "meta.json").read_text())
        runs = [r for r in meta["runs"] if r["input"] == "small_cs_na_empty"]
        assert runs and all(r["status"] == "error" and "singular" in r["error"] for r in runs)


@pytest.mark.parametrize("setting", list(EMPTY_SETTINGS))
def test_small_cs_na_empty_runs_where_r_stops(setting):
    X, cov = load_small_cs_na("small_cs_na_empty")
    assert int(X.isna().to_numpy().sum()) == 322
    model = featharm.ComBat(batch="site", formula="age + sex", priors="pool", **EMPTY_SETTINGS[setting])
    with pytest.warns(MissingValueWarning) as rec:
        h = model.fit_transform(X, cov).to_numpy()
    text = " ".join(str(w.message) for w in rec)
    assert "'site03': ['roi005_thickness']" in text  # the empty site x feature, named
    if not model.mean_only:
        assert "'site02': ['roi007_thickness']" in text  # the single value, named
    missing = X.isna().to_numpy()
    assert np.array_equal(np.isnan(h), missing) and np.isfinite(h[~missing]).all()
    assert model.n_obs_.loc["site03", "roi005_thickness"] == 0 and model.n_obs_.loc["site02", "roi007_thickness"] == 1
    # the empty cell: no estimate; its posterior is the prior (parametric and mean-only: gamma_bar)
    assert np.isnan(model.gamma_hat_.loc["site03", "roi005_thickness"])
    assert np.isnan(model.batch_coef_.loc["site03", "roi005_thickness"])
    assert np.isfinite(model.gamma_star_.to_numpy()).all() and (model.delta_star_.to_numpy() > 0).all()
    if setting != "combat_nonparam":
        assert model.gamma_star_.loc["site03", "roi005_thickness"] == model.priors_.loc["site03", "gamma_bar"]
    # the single value's site: finite priors (featharm leaves the undefined delta_hat out; R gets NaN)
    assert np.isfinite(model.priors_.drop(index=["site01"] if model.ref_batch else []).
                       drop(columns=["a_prior", "b_prior"] if model.mean_only else []).to_numpy()).all()
