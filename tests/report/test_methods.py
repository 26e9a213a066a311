"""featharm.report.methods_text: the methods paragraph names the version, the family and every option, the
formula, the numbers of sites, subjects and features, and the references; the EB check's numbers."""

from __future__ import annotations

import html

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

import featharm as fh  # noqa: E402
from featharm._version import __version__  # noqa: E402
from featharm.exceptions import InputError, NotFittedError  # noqa: E402
from featharm.report import FAMILY_METHODS, REFERENCES, methods_references, methods_text, register_family  # noqa: E402
from featharm.report._methods import _value  # noqa: E402
from featharm.report._stats import eb_fit_table  # noqa: E402


@pytest.fixture(scope="module")
def sim():
    return fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=5, unbalanced=False, random_state=4)


FAMILIES = [
    (fh.ComBat, {"formula": "age + sex"}, "ComBat", "fortin2018"),
    (fh.ComBatGAM, {"formula": "sex", "smooth": "age"}, "ComBat-GAM", "pomponio2020"),
    (fh.CovBat, {"formula": "age + sex"}, "CovBat", "chen2022"),
    (fh.ComBatLS, {"formula": "age + sex"}, "ComBatLS", "gardner2025"),
]


@pytest.mark.parametrize(("cls", "kw", "title", "own"), FAMILIES, ids=[f[0].__name__ for f in FAMILIES])
def test_methods_text_names_everything(sim, cls, kw, title, own):
    hm = cls(batch="site", **kw).fit(sim.X, sim.covariates)
    text = methods_text(hm, sim.X, sim.covariates)
    para, refs = text.split("\n\nReferences\n")
    assert f"featharm {__version__}" in para and f"with {title} (" in para
    for name, value in hm.get_params(deep=False).items():  # every option deciding the numbers, by name and value
        if name in ("n_jobs", "covariates"):  # threads and a covariate lookup table change no number
            assert f" {name} = " not in para and f": {name} = " not in para
        else:
            assert f"{name} = {_value(value)}" in para
    assert f"'{kw['formula']}'" in para
    counts = sim.covariates["site"].value_counts()
    assert (f"{len(sim.X)} subjects ({counts.min()} to {counts.max()} per site) from 3 sites (batch variable "
            f"'site') and 5 features") in para
    lines = refs.splitlines()
    assert lines == methods_references(hm)
    assert [ln.split(" (")[0] for ln in lines[:3]] == [
        "Johnson WE, Li C, Rabinovic A", "Fortin JP, Parker D, Tunç B, et al.",
        "Fortin JP, Cullen N, Sheline YI, et al."]
    assert "Biostatistics 8(1):118-127" in lines[0] and "NeuroImage 161:149-170" in lines[1]
    assert "NeuroImage 167:104-120" in lines[2] and lines[-1] == REFERENCES[own][1]
    assert REFERENCES[own][0] in para  # cited in the text too


def test_methods_text_longitudinal_counts_scans_and_subjects():
    s = fh.datasets.make_longitudinal(random_state=0)
    hm = fh.LongComBat(batch="site", formula="age").fit(s.X, s.covariates)
    text = methods_text(hm, s.X, s.covariates)
    n_subj = s.covariates["subject"].nunique()
    assert f"{len(s.X)} scans of {n_subj} subjects" in text and "Beer JC" in text
    assert "random intercept per subject (subject column 'subject'" in text


def test_methods_options_and_variants(sim):
    ref = sorted(sim.covariates["site"].unique())[1]
    hm = fh.ComBat(batch="site", formula="age", eb=True, parametric=False, ref_batch=ref).fit(sim.X, sim.covariates)
    text = methods_text(hm, references=False)
    assert "non-parametric empirical Bayes" in text and f"site '{ref}' was the reference batch" in text
    assert "Zhang et al., 2018" in text and "References" not in text
    assert f"{len(sim.X)} subjects" in text  # from the model's recorded batch sizes
    hm = fh.ComBat(batch="site", eb=False, mean_only=True).fit(sim.X, sim.covariates)
    text = methods_text(hm)
    assert "without empirical-Bayes shrinkage" in text and "only the additive effects were removed" in text
    assert "(none: grand mean only)" in text


def test_unknown_family_and_registration(sim):
    class MyComBat(fh.ComBat):
        pass

    hm = MyComBat(batch="site", formula="age").fit(sim.X, sim.covariates)
    text = methods_text(hm)
    assert "with MyComBat (Johnson et al., 2007" in text and "no specific methods wording for MyComBat" in text
    try:
        register_family("MyComBat", "my ComBat", "It used {formula} and tol {tol}.", ["johnson2007"])
        text = methods_text(hm)
        assert "with my ComBat (Johnson et al., 2007)" in text and "It used 'age' and tol 0.0001." in text
    finally:
        FAMILY_METHODS.pop("MyComBat", None)
    with pytest.raises(InputError, match="unknown reference key"):
        register_family("X", "x", "x", ["nobody2099"])
    with pytest.raises(NotFittedError, match="not fitted"):
        methods_text(fh.ComBat())


def test_every_family_entry_cites_known_references_and_fills():
    for name, fam in FAMILY_METHODS.items():
        assert all(k in REFERENCES for k in fam.references), name
        assert "{" not in fam.model.format_map({k: "x" for k in ("formula", "smooth", "df", "method", "subject",
                                                                 "random_slope", "percent_var", "n_components",
                                                                 "scale_formula")})


@pytest.mark.slow
def test_report_holds_the_methods_text_and_eb_check(sim):
    hm = fh.ComBat(batch="site", formula="age + sex").fit(sim.X, sim.covariates)
    rep = hm.report(sim.X, sim.covariates, classification=False)
    expected = html.escape(methods_text(hm, sim.X, sim.covariates), quote=True)
    assert f'<pre class="methods" id="methods-text">{expected}</pre>' in rep.html.replace("&#34;", "&quot;").replace(
        "&#39;", "&#x27;")
    assert "EB check per site" in rep.html and "Age trends before and after" in rep.sections


def test_eb_fit_table_ks_by_hand(sim):
    hm = fh.ComBat(batch="site", formula="age + sex").fit(sim.X, sim.covariates)
    fit = eb_fit_table(hm, "site")
    for i in range(3):
        pri = hm.priors_.iloc[i]
        g = np.sort(hm.gamma_hat_.to_numpy()[i])
        F = stats.norm.cdf(g, pri["gamma_bar"], np.sqrt(pri["tau2"]))
        n = g.size
        ks = max(np.max(np.arange(1, n + 1) / n - F), np.max(F - np.arange(n) / n))
        assert fit["KS γ̂ vs normal"].iloc[i] == pytest.approx(ks, abs=1e-12)
        a, b = pri["a_prior"], pri["b_prior"]
        assert fit["prior mean δ²"].iloc[i] == pytest.approx(b / (a - 1))
        assert fit["prior mean δ²"].iloc[i] == pytest.approx(hm.delta_hat_.iloc[i].mean(), rel=1e-8)  # moments


class _Reportable:
    """Only the report protocol (no EB estimates, an unknown family): the report must still be made."""

    def __init__(self, fitted):
        self._m = fitted
        self.batch, self.batches_, self.formula = fitted.batch, fitted.batches_, fitted.formula
        self.feature_names_in_, self.design_ = fitted.feature_names_in_, fitted.design_

    def get_params(self, deep=True):
        return self._m.get_params(deep)

    def transform(self, X, covariates=None):
        return self._m.transform(X, covariates)


@pytest.mark.slow
def test_report_on_a_model_without_eb_priors(sim):
    model = _Reportable(fh.ComBat(batch="site", formula="age + sex").fit(sim.X, sim.covariates))
    rep = fh.report.make_report(sim.X, sim.covariates, model=model, classification=False)
    assert "EB check: _Reportable has no per-site empirical-Bayes priors to check." in rep.html
    assert "EB check per site" not in rep.html
    assert "no specific methods wording for _Reportable" in rep.html and f"{len(sim.X)} subjects" in rep.html


def test_methods_text_states_the_priors_per_measure_group(sim):
    """With priors per measure group the paragraph says so, with each measure's number of features; one pool
    (``priors="pool"``, or one measure) keeps the pooled wording."""
    s = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=7, unbalanced=False, random_state=4)
    X, cov = s.X.copy(), s.covariates
    X.columns = ["lh_a_thickness", "lh_b_thickness", "lh_c_thickness", "lh_d_thickness", "Left-A", "Left-B",
                 "Left-C"]
    grouped = fh.ComBat(batch="site", formula="age", priors="group").fit(X, cov)
    text = methods_text(grouped, references=False)
    assert "one pair of priors per site and measure: thickness (4 features), volume (3 features)" in text
    assert "pooled over features" not in text
    nonpar = fh.ComBat(batch="site", formula="age", parametric=False).fit(X, cov)
    assert "other features of the same measure: thickness (4 features)" in methods_text(nonpar)
    pooled = fh.ComBat(batch="site", formula="age", priors="pool").fit(X, cov)
    assert "pooled over features" in methods_text(pooled) and "per site and measure" not in methods_text(pooled)
