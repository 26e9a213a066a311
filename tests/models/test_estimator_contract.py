"""One estimator contract, run over every model family (ComBat, ComBatGAM, LongComBat, CovBat, ComBatLS).

What scikit-learn's ``check_estimator`` asserts for array estimators, restated for featharm's harmonizers,
whose ``fit``/``transform`` need a covariate table next to the features: parameters stored untouched by
``__init__``, ``get_params``/``set_params``/``clone``/``repr`` round trips, every parameter validated at
fit with an error naming it, DataFrames in and out with the same index and columns, inputs untouched,
``transform(train) == fit_transform(train)``, exact save/load round trips through ``load_model`` and a
newer file schema refused. The scikit-learn checks that apply as they are run at the end of the file; the
others are listed in ``SKLEARN_CHECKS_NOT_APPLICABLE`` with the reason.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import re
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SkNotFittedError
from sklearn.utils import estimator_checks as sk_checks
from sklearn.utils.validation import check_is_fitted

import featharm as fh
from featharm.datasets import make_longitudinal
from featharm.exceptions import ModelFileError, NotFittedError
from featharm.persistence import SCHEMA_VERSION

# Each family with parameters that fit the shared data below (age, sex, time; repeated scans per subject).
FAMILIES = {
    "ComBat": (fh.ComBat, dict(formula="age + sex")),
    "ComBatGAM": (fh.ComBatGAM, dict(formula="sex", smooth=["age"])),
    "LongComBat": (fh.LongComBat, dict(subject="subject", time="time", formula="age + sex + time")),
    "CovBat": (fh.CovBat, dict(formula="age + sex")),
    "ComBatLS": (fh.ComBatLS, dict(formula="age + sex", scale_formula="age")),
    # fitted on the subjects scanned at several sites; age changes between a subject's scans
    "TravelingSubjects": (fh.TravelingSubjects, dict(subject="subject", formula="age")),
    "LongComBatGAM": (fh.LongComBatGAM, dict(subject="subject", time="time", formula="sex", smooth=["age"])),
}

# One invalid value of EVERY constructor parameter: the shared ones, then each family's own (the test below
# fails when a parameter is added without an entry here). Fitting with it must raise a ValueError whose
# message names the parameter and the family.
_COMMON_BAD = {
    "batch": 3.5, "formula": 12, "eb": "yes", "parametric": None, "mean_only": 1.5, "mean_only_form": "R",
    "ref_batch": ["a"], "tol": -1.0, "max_iter": 0, "compat": "R", "missing_covariates": "impute",
    "covariates": "participants.tsv", "n_jobs": 0,
}
_FAMILY_BAD = {
    "ComBat": {},
    "ComBatGAM": dict(smooth=5, df=3, method="ML", shared_smoothing="no", smooth_bounds=[0, 1],
                      extrapolate="cubic", random_state="seed", knots="even"),
    "LongComBat": dict(subject=7, time=1.5, random_slope="no", standardize="z", n_iter=-1),
    "CovBat": dict(percent_var=1.5, n_components=0, std_var="no", score_eb=2, score_parametric="no"),
    "ComBatLS": dict(scale_formula=3, fit_tol=0.0, fit_max_iter=0),
    "TravelingSubjects": dict(subject=7, scale="no"),
    "LongComBatGAM": dict(subject=7, time=1.5, smooth=5, df=3, smooth_bounds=[0, 1], extrapolate="cubic",
                          standardize="z", n_iter=-1),
}


def bad_values(name):
    params = FAMILIES[name][0]().get_params()
    return {**{k: v for k, v in _COMMON_BAD.items() if k in params}, **_FAMILY_BAD[name]}


# Learned attributes every family publishes after fit (family-specific ones are tested per family).
COMMON_ATTRIBUTES = ["batches_", "batch_sizes_", "n_features_in_", "feature_names_in_", "design_", "alpha_",
                     "beta_", "batch_coef_", "sigma_", "gamma_hat_", "delta_hat_", "gamma_star_",
                     "delta_star_", "priors_", "n_iter_", "constant_features_", "fit_warnings_"]
# Families without ComBat's empirical-Bayes step publish their own estimates instead of gamma*/delta*/priors.
NO_EB_ATTRIBUTES = {
    "TravelingSubjects": ["batches_", "batch_sizes_", "n_features_in_", "feature_names_in_", "design_", "alpha_",
                          "beta_", "sigma_", "bias_", "bias_se_", "noise_sd_", "scale_", "constant_features_",
                          "fit_warnings_"],
}


def attributes(name):
    return NO_EB_ATTRIBUTES.get(name, COMMON_ATTRIBUTES)


@pytest.fixture(scope="module")
def data():
    sim = make_longitudinal(n_subjects=60, n_sites=3, n_features=6, random_state=0)
    return sim.X, sim.covariates


def make(name, **kw):
    cls, params = FAMILIES[name]
    return cls(**{**params, **kw})


@pytest.fixture(scope="module")
def fitted(data):
    X, cov = data
    return {name: make(name).fit(X, cov) for name in FAMILIES}


families = pytest.mark.parametrize("name", list(FAMILIES))


# ------------------------------------------------------------------------------------------ construction
@families
def test_init_stores_params_only(name):
    est = make(name)
    assert sorted(vars(est)) == sorted(est.get_params())
    assert not [k for k in vars(est) if k.endswith("_")]
    cls = FAMILIES[name][0]
    sig = inspect.signature(cls.__init__)
    assert all(p.kind == p.KEYWORD_ONLY for p in list(sig.parameters.values())[1:])
    default = cls()
    assert all(getattr(default, k) is v.default or getattr(default, k) == v.default
               for k, v in list(sig.parameters.items())[1:])


@families
def test_init_does_not_validate(name):
    est = make(name, **bad_values(name))  # stored as given; rejected by fit
    for k, v in bad_values(name).items():
        assert est.get_params()[k] is v


@families
def test_shared_parameter_names_and_defaults(name):
    """The parameters families share mean the same thing and have the same default."""
    shared = {"batch": "site", "formula": None, "eb": True, "parametric": True, "mean_only": False,
              "mean_only_form": "sva", "ref_batch": None, "tol": 1e-4, "max_iter": 1000, "compat": None,
              "missing_covariates": "error", "covariates": None, "n_jobs": None}
    params = FAMILIES[name][0]().get_params()
    for k, v in shared.items():
        if k in params:
            assert params[k] == v, (name, k)
    assert params["batch"] == "site" and "formula" in params and ("eb" in params or name in NO_EB_ATTRIBUTES)


@families
def test_clone_get_params_set_params_repr(name, fitted):
    option = "scale" if name == "TravelingSubjects" else "eb"  # a switch off by default there (no EB)
    value = option == "scale"
    est = make(name, **{option: value})
    params = est.get_params()
    c = clone(est)
    assert c is not est and c.get_params() == params
    assert est.set_params(**params) is est and est.get_params() == params
    with pytest.raises(ValueError, match="not_a_param"):
        est.set_params(not_a_param=1)
    # repr shows the non-default parameters and evaluates back to an equal estimator
    r = repr(est)
    assert r.startswith(name + "(") and f"{option}={value}" in r
    assert eval(r, {name: FAMILIES[name][0]}).get_params() == params
    # cloning a fitted model copies the parameters, not the fit
    c2 = clone(fitted[name])
    assert c2.get_params() == fitted[name].get_params() and not hasattr(c2, "batches_")


@families
def test_parameter_validation_names_the_parameter(name, data):
    X, cov = data
    est = make(name)
    bad = bad_values(name)
    assert sorted(bad) == sorted(est.get_params()), "every parameter needs an invalid value in _FAMILY_BAD"
    for param, value in bad.items():
        est = make(name).set_params(**{param: value})
        with pytest.raises(ValueError, match=rf"'{param}'") as info:
            est.fit(X, cov)
        assert isinstance(info.value, fh.exceptions.FeatharmError), (param, info.value)
        assert name in str(info.value), (param, str(info.value))


# ------------------------------------------------------------------------------------------ life cycle
def test_parameters_changed_after_fit_are_checked_where_used(data, fitted):
    """ComBatGAM's ``extrapolate`` is documented as changeable after fit: a bad value is refused by
    transform, not ignored."""
    X, cov = data
    est = clone(fitted["ComBatGAM"]).fit(X, cov)
    est.set_params(extrapolate="cubic")
    with pytest.raises(ValueError, match="'extrapolate'"):
        est.transform(X, cov)
    with pytest.raises(ValueError, match="'extrapolate'"):
        est.smooth_effect("age", [30.0, 40.0])
    est.set_params(extrapolate="linear")
    pd.testing.assert_frame_equal(est.transform(X, cov), fitted["ComBatGAM"].transform(X, cov), check_exact=True)


@families
def test_fit_returns_self_and_publishes_common_attributes(name, data):
    X, cov = data
    est = make(name)
    assert est.fit(X, cov) is est
    for attr in attributes(name):
        assert hasattr(est, attr), (name, attr)
    assert est.n_features_in_ == X.shape[1]
    assert list(est.feature_names_in_) == list(X.columns)
    assert list(est.batches_) == sorted(cov["site"].unique())
    assert est.batch_sizes_.sum() == len(X)
    site_tables = ("bias_", "bias_se_", "noise_sd_", "scale_") if name in NO_EB_ATTRIBUTES else \
        ("gamma_hat_", "delta_hat_", "gamma_star_", "delta_star_")
    for attr in site_tables:
        tab = getattr(est, attr)
        assert list(tab.index) == list(est.batches_) and list(tab.columns) == list(X.columns)
    if name not in NO_EB_ATTRIBUTES:
        assert list(est.priors_.columns) == ["gamma_bar", "tau2", "a_prior", "b_prior"]
    assert list(est.get_feature_names_out()) == list(X.columns)


@families
def test_unfitted_model_raises_not_fitted(name, data, tmp_path):
    X, cov = data
    est = make(name)
    for call in (lambda: est.transform(X, cov), lambda: est.save(tmp_path / "m.fhm"),
                 lambda: est.get_feature_names_out()):
        with pytest.raises(SkNotFittedError):  # featharm's NotFittedError subclasses scikit-learn's
            call()
    with pytest.raises(NotFittedError, match=name):
        est.transform(X, cov)
    with pytest.raises(SkNotFittedError):
        check_is_fitted(est)
    check_is_fitted(est.fit(X, cov))


@families
def test_dataframe_in_out_same_index_and_columns(name, data, fitted):
    X, cov = data
    rows = np.random.default_rng(1).permutation(len(X))
    Xs, covs = X.iloc[rows], cov.iloc[rows[::-1]]  # rows shuffled, covariates in yet another order
    out = fitted[name].transform(Xs, covs)
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(Xs.index) and out.columns.equals(Xs.columns)
    ref = fitted[name].transform(X, cov)
    pd.testing.assert_frame_equal(out, ref.loc[Xs.index], check_exact=True)
    # columns in another order come back in that order, each with its own values
    cols = list(X.columns[::-1])
    pd.testing.assert_frame_equal(fitted[name].transform(X[cols], cov), ref[cols], check_exact=True)


@families
def test_fit_transform_refuses_unknown_arguments(name, data):
    X, cov = data
    # fit takes keyword metadata (covariates=, for scikit-learn's routing): any other keyword is named
    with pytest.raises(ValueError, match=r"fit takes X and covariates only; got \['new_sites'\]"):
        make(name).fit(X, cov, new_sites="estimate")
    with pytest.raises(ValueError, match="new_sites"):
        make(name).fit_transform(X, cov, new_sites="estimate")


@families
def test_failed_fit_leaves_the_model_unfitted(name, data):
    """A refit that fails (here: a single feature with variance left for empirical Bayes) must not leave a
    half-fitted model behind: transform then says 'not fitted', not a KeyError."""
    X, cov = data
    est = make(name).fit(X, cov)
    X1, cov1 = X.copy(), cov
    X1.iloc[:, 1:] = 1.0
    if name == "TravelingSubjects":  # no EB; fails instead when no subject links the sites (each scan its own)
        X1, cov1 = X, cov.assign(subject=[f"s{i}" for i in range(len(cov))])
    with pytest.raises(ValueError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X1, cov1)
    assert not [k for k in vars(est) if k.endswith("_")]
    with pytest.raises(NotFittedError):
        est.transform(X, cov)
    pd.testing.assert_frame_equal(est.fit(X, cov).transform(X, cov), make(name).fit_transform(X, cov),
                                  check_exact=True)


@families
def test_transform_is_row_wise(name, data, fitted):
    """Any subset of rows (check_methods_subset_invariance), e.g. one site alone, comes out as in the full
    table; a deep copy of a fitted model transforms identically."""
    import copy

    X, cov = data
    est = fitted[name]
    full = est.transform(X, cov)
    rows = np.random.default_rng(2).choice(len(X), 15, replace=False)
    pd.testing.assert_frame_equal(est.transform(X.iloc[rows], cov.iloc[rows]), full.iloc[rows], check_exact=True)
    one = (cov["site"] == "site01").to_numpy()
    pd.testing.assert_frame_equal(est.transform(X[one], cov[one]), full[one], check_exact=True)
    pd.testing.assert_frame_equal(copy.deepcopy(est).transform(X, cov), full, check_exact=True)


@families
def test_numpy_features_with_covariates(name, data):
    """A NumPy feature array is matched to the covariates row by row: the same numbers as the DataFrame,
    the covariates' index, columns x0, x1, ... (also at transform)."""
    X, cov = data
    est = make(name)
    out = est.fit_transform(X.to_numpy(), cov)
    assert out.index.equals(cov.index) and list(out.columns) == [f"x{j}" for j in range(X.shape[1])]
    np.testing.assert_array_equal(out.to_numpy(), make(name).fit_transform(X, cov).to_numpy())
    pd.testing.assert_frame_equal(est.transform(X.to_numpy(), cov), out, check_exact=True)


@families
def test_inputs_are_not_modified(name, data):
    X, cov = data
    X0, cov0 = X.copy(), cov.copy()
    est = make(name)
    est.fit_transform(X, cov)
    est.transform(X, cov)
    pd.testing.assert_frame_equal(X, X0, check_exact=True)
    pd.testing.assert_frame_equal(cov, cov0, check_exact=True)


@families
def test_transform_train_equals_fit_transform(name, data):
    X, cov = data
    est = make(name)
    Xh = est.fit_transform(X, cov)
    pd.testing.assert_frame_equal(est.transform(X, cov), Xh, check_exact=True)
    # refitting gives the same model (check_fit_idempotent)
    pd.testing.assert_frame_equal(est.fit(X, cov).transform(X, cov), Xh, check_exact=True)


@families
def test_set_output(name, data):
    X, cov = data
    est = make(name)
    assert est.set_output(transform="pandas") is est
    cols = list(X.columns[::-1])
    Xh = est.fit_transform(X, cov)
    out = est.transform(X[cols], cov)  # the labels follow the values, not the fit-time order
    pd.testing.assert_frame_equal(out, Xh[cols], check_exact=True)
    est.set_output(transform="default")  # featharm's default output is a DataFrame as well
    pd.testing.assert_frame_equal(est.transform(X, cov), Xh, check_exact=True)
    with pytest.raises(ValueError, match="'transform'"):
        est.set_output(transform="arrow")


@families
def test_global_transform_output_config(name, data):
    """scikit-learn's ``set_config(transform_output=...)`` applies when ``set_output`` was not called."""
    from sklearn import config_context

    X, cov = data
    cols = list(X.columns[::-1])
    Xh = make(name).fit_transform(X, cov)
    with config_context(transform_output="pandas"):
        pd.testing.assert_frame_equal(make(name).fit(X, cov).transform(X[cols], cov), Xh[cols], check_exact=True)
    # polars is optional: without it, asking for it is a clear ImportError
    try:
        import polars  # noqa: F401
    except ImportError:
        with config_context(transform_output="polars"), pytest.raises(ImportError, match="pip install polars"):
            make(name).fit(X, cov).transform(X, cov)
    else:
        with config_context(transform_output="polars"):
            out = make(name).fit(X, cov).transform(X, cov)
        assert list(out.columns) == list(X.columns) and np.array_equal(out.to_numpy(), Xh.to_numpy())


@families
def test_sklearn_tags(name):
    tags = make(name).__sklearn_tags__()
    assert tags.requires_fit and not tags.input_tags.sparse
    assert tags.input_tags.allow_nan  # NaN feature cells: every family (methods §1.8)
    assert tags.transformer_tags is not None and tags.transformer_tags.preserves_dtype == ["float64"]
    assert tags.target_tags.required is False


# ------------------------------------------------------------------------------------------ persistence
@families
def test_save_load_round_trip_is_exact(name, data, fitted, tmp_path):
    X, cov = data
    est = fitted[name]
    path = tmp_path / f"{name}.fhm"
    est.save(path)
    loaded = fh.load_model(path)
    assert type(loaded) is type(est) and loaded.get_params() == est.get_params()
    for attr in attributes(name):
        a, b = getattr(est, attr), getattr(loaded, attr)
        if isinstance(a, (pd.Series, pd.DataFrame)):
            assert a.equals(b), attr
        elif isinstance(a, np.ndarray):
            assert np.array_equal(a, b), attr
        elif attr != "design_":
            assert a == b, attr
    pd.testing.assert_frame_equal(loaded.transform(X, cov), est.transform(X, cov), check_exact=True)


# A non-default configuration of each family (reference batch, other EB, extra options).
NON_DEFAULT = {
    "ComBat": dict(ref_batch="site02", parametric=False, mean_only=True, mean_only_form="n", compat="neuroCombat"),
    "ComBatGAM": dict(smooth_bounds={"age": (0, 120)}, extrapolate="linear", method="GCV", ref_batch="site01", df=8),
    "LongComBat": dict(random_slope=True, standardize="marginal", eb=False, n_iter=10),
    "CovBat": dict(n_components=2, score_eb=True, std_var=False),
    "ComBatLS": dict(ref_batch="site03", eb=False, fit_tol=1e-6),
    "TravelingSubjects": dict(ref_batch="site02", scale=True),
    "LongComBatGAM": dict(smooth_bounds={"age": (0, 120)}, extrapolate="linear", df=8, standardize="marginal",
                          eb=False, n_iter=10),
}


@families
def test_save_load_round_trip_non_default_parameters(name, data, tmp_path):
    X, cov = data
    est = make(name, **NON_DEFAULT[name])
    Xh = est.fit_transform(X, cov)
    pd.testing.assert_frame_equal(est.transform(X, cov), Xh, check_exact=True)
    est.save(tmp_path / "m.fhm")
    loaded = fh.load_model(tmp_path / "m.fhm")
    assert loaded.get_params() == est.get_params()  # tuples stay tuples, lists lists
    pd.testing.assert_frame_equal(loaded.transform(X, cov), Xh, check_exact=True)


@families
def test_newer_schema_is_refused(name, fitted, tmp_path):
    path, newer = tmp_path / "m.fhm", tmp_path / "newer.fhm"
    fitted[name].save(path)
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(newer, "w") as zout:
        for item in zin.namelist():
            raw = zin.read(item)
            if item == "manifest.json":
                manifest = json.loads(raw)
                assert manifest["model"] == name
                manifest["schema_version"] = SCHEMA_VERSION + 1
                raw = json.dumps(manifest).encode()
            zout.writestr(item, raw)
    with pytest.raises(ModelFileError, match=f"schema {SCHEMA_VERSION + 1}"):
        fh.load_model(newer)


# ------------------------------------------------------------------------------------------ documentation
def _section(doc: str, title: str) -> str:
    m = re.search(rf"^    {title}\n    -+\n(.*?)(?=^    \S[^\n]*\n    -+\n|\Z)", doc, re.S | re.M)
    return m.group(1) if m else ""


@families
def test_docstring_documents_every_parameter(name):
    cls = FAMILIES[name][0]
    doc = cls.__doc__
    for title in ("Parameters", "Attributes", "Notes", "Examples"):
        assert _section(doc, title).strip(), f"{name} docstring lacks a {title} section"
    documented = set()
    for line in _section(doc, "Parameters").splitlines():
        if re.match(r"^    \S", line):  # a parameter line (descriptions are indented further)
            documented |= {n.strip() for n in line.split(" : ")[0].split(",")}
    assert sorted(set(cls().get_params()) - documented) == []
    documented_attributes = _section(doc, "Attributes")
    assert [a for a in attributes(name) if a not in documented_attributes] == []


@pytest.mark.parametrize("module", ["combat", "gam", "covbat", "combatls", "longitudinal", "traveling",
                                    "longgam"])
def test_model_docstring_examples_run(module):
    """The Examples sections run as doctests: on the bundled IXI data, LongComBat's on simulated repeated
    scans (IXI is cross-sectional)."""
    mod = importlib.import_module(f"featharm.models.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 4


# ------------------------------------------------------------------------------------------ scikit-learn checks
# The checks of sklearn.utils.estimator_checks that do not fit or transform: they run unchanged.
SKLEARN_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_mixin_order",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimators_unfitted",
    "check_transformers_unfitted",
    "check_fit1d",
]

# The others call ``fit(X, y)`` / ``transform(X)`` on bare arrays. A harmonizer needs a covariate table with
# the batch column (``transform(X, covariates)``), so they fail at once with featharm's InputError ("got a
# ndarray where the covariates go", naming the two ways a Pipeline gives them: tests/models/test_pipeline.py);
# sparse and complex input are refused with
# "needs the features as a pandas DataFrame" rather than the wording those checks look for. What they check
# is covered above for featharm's call signature:
SKLEARN_CHECKS_NOT_APPLICABLE = {
    "check_estimators_fit_returns_self": "test_fit_returns_self_and_publishes_common_attributes",
    "check_transformer_general / check_pipeline_consistency": "test_transform_train_equals_fit_transform",
    "check_fit_idempotent": "test_transform_train_equals_fit_transform",
    "check_dont_overwrite_parameters / check_estimators_overwrite_params": "test_inputs_are_not_modified and "
    "test_init_does_not_validate (fit never writes parameters)",
    "check_n_features_in / check_dataframe_column_names_consistency": "test_fit_returns_self_and_publishes_"
    "common_attributes, test_dataframe_in_out_same_index_and_columns",
    "check_set_output_transform / check_set_output_transform_pandas": "test_set_output",
    "check_estimators_pickle": "featharm never pickles; test_save_load_round_trip_is_exact",
    "check_param_validation": "uses scikit-learn's private _parameter_constraints; "
    "test_parameter_validation_names_the_parameter",
    "check_estimators_nan_inf / check_estimators_empty_data_messages": "tests/test_validation.py",
    "check_methods_sample_order_invariance / check_methods_subset_invariance": "test_dataframe_in_out_same_"
    "index_and_columns (rows matched by index); a subset changes nothing as transform is row-wise",
}


@families
@pytest.mark.parametrize("check", SKLEARN_CHECKS)
def test_sklearn_estimator_checks(name, check):
    getattr(sk_checks, check)(name, make(name))


# ------------------------------------------------------------------------------------------ package
def test_public_api_is_exported():
    import featharm.models

    for name in fh.__all__:
        assert getattr(fh, name) is not None, name
    assert set(featharm.models.__all__) <= set(fh.__all__)
    for name in FAMILIES:
        assert getattr(fh, name) is FAMILIES[name][0] and name in fh.BaseHarmonizer._registry
    ns: dict = {}
    exec("from featharm import *", ns)
    assert {"ComBat", "load_model", "diagnostics", "plots"} <= set(ns)


def test_import_does_not_load_heavy_optional_modules():
    """``import featharm`` loads the models, not the diagnostics, plots, report or formula machinery."""
    import subprocess
    import sys

    code = ("import sys, featharm; print(' '.join(m for m in sys.modules if m.split('.')[0] in "
            "('matplotlib', 'seaborn', 'statsmodels', 'formulaic', 'jinja2') or m.startswith(("
            "'sklearn.model_selection', 'featharm.diagnostics', 'featharm.plots', 'featharm.report'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == []


def test_import_is_light_and_the_namespace_documented():
    """``import featharm`` loads numpy and pandas only: scikit-learn, scipy.stats, matplotlib, seaborn,
    statsmodels and formulaic come with the first use of what needs them; ``dir()`` shows the API only."""
    import subprocess
    import sys

    heavy = ("sklearn", "scipy.stats", "matplotlib", "seaborn", "statsmodels", "formulaic")
    code = (f"import sys, featharm; print(' '.join(m for m in {heavy!r} if m in sys.modules)); "
            "featharm.ComBat; print(int('sklearn' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, second = out.splitlines()
    assert first.split() == [] and second == "1"  # loaded by the first use of a model
    assert dir(fh) == sorted(fh.__all__)
    assert not any(name.startswith("_") or name in ("eb", "splines", "persistence") for name in fh.__all__
                   if name != "__version__")


def test_not_fitted_error_is_scikit_learns():
    from sklearn.exceptions import NotFittedError as SkNotFitted

    assert issubclass(fh.exceptions.NotFittedError, SkNotFitted)
    assert fh.exceptions.NotFittedError is fh.exceptions.NotFittedError  # made once
    with pytest.raises(SkNotFitted):
        fh.ComBat().transform(np.zeros((2, 2)), None)
