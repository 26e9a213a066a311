"""featharm.diagnostics.DiagnosticsResult: the mapping of tables, the run's description, summary, writing,
HTML and plot accessors; diagnose()'s seeds; the public namespace of featharm.diagnostics."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import os  # noqa: E402
from collections.abc import Mapping  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import featharm as fh  # noqa: E402
from featharm import diagnostics as dg  # noqa: E402
from featharm.diagnostics._results import format_number  # noqa: E402
from featharm.diagnostics.suite import TABLES  # noqa: E402
from featharm.exceptions import SmallBatchWarning  # noqa: E402


@pytest.fixture(scope="module")
def sim():
    s = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=7, unbalanced=False, random_state=4)
    Xh = fh.ComBat(batch="site", formula="age + sex").fit_transform(s.X, s.covariates)
    return s.X, s.covariates, Xh


@pytest.fixture(scope="module")
def result(sim):
    X, cov, Xh = sim
    return dg.diagnose(X, cov, batch="site", formula="age + sex", X_harmonized=Xh, n_permutations=19,
                       classification_permutations=2, n_repeats=1, random_state=3)


def test_result_is_a_mapping_of_the_tables(result):
    assert isinstance(result, dg.DiagnosticsResult) and isinstance(result, Mapping)
    complete = [t for t in TABLES if t != "missingness"]  # made only when feature cells are missing
    assert list(result) == complete == list(result.keys()) == list(result.tables)
    assert len(result) == 8 and "preservation" in result and "site_mixing" in result and "nope" not in result
    for name, table in result.items():
        assert result[name] is table and isinstance(table, pd.DataFrame)
    assert [v is result[k] for k, v in zip(result, result.values())] == [True] * 8
    assert result.get("nope") is None
    with pytest.raises(KeyError, match="no table 'nope'.*site_effects"):
        result["nope"]
    assert result == result and result != dg.diagnose  # identity, not a comparison of DataFrames
    assert dg.DiagnosticsResult.TABLES == tuple(TABLES)


def test_result_describes_the_run(sim, result):
    X, cov, _ = sim
    assert result.n_samples == len(X) and result.features == list(X.columns) and result.n_features == X.shape[1]
    assert result.batch == "site" and result.batches == sorted(cov.site.unique())
    assert result.batch_sizes.to_dict() == cov.site.value_counts().to_dict()
    assert result.formula == "age + sex" and result.design_columns == ["age", "sex[T.M]"]
    assert result.tests == ("anova", "kruskal_wallis", "levene", "brown_forsythe", "bartlett", "fligner_killeen")
    assert result.data == ("raw", "harmonized")
    o = result.options
    assert (o["model"], o["n_permutations"], o["classification_permutations"], o["n_repeats"], o["random_state"],
            o["seeds"], o["harmonizer"]) == ("ols", 19, 2, 1, 3, [3, 3, 3], None)
    raw_only = dg.diagnose(X, cov, formula="age + sex", multivariate=False, classification=False, n_permutations=0)
    assert list(raw_only) == ["site_effects", "site_effect_sizes", "covariate_balance"]
    assert raw_only.data == ("raw",)
    with pytest.raises(KeyError, match="not computed in this run"):
        raw_only["preservation"]


def test_summary_counts_equal_the_tables(result):
    se = result["site_effects"]
    summ = result.summary_table()
    assert list(summ.columns) == ["data", "test", "variant", "effect_size_name", "n_features", "n_significant",
                                  "median_effect_size"]
    for r in summ.itertuples():
        t = se[(se.data == r.data) & (se.test == r.test)]
        assert r.n_significant == int((t.p_fdr < 0.05).sum()) and r.n_features == len(t)
        assert r.median_effect_size == pytest.approx(np.median(t.effect_size)) or t.effect_size.isna().all()
    text = result.summary()
    for data in ("raw", "harmonized"):
        s = summ[summ.data == data]
        line = ", ".join(f"{r.test} {r.n_significant}/{r.n_features}" for r in s.itertuples())
        assert f"{data}: features with a site effect (BH-FDR 0.05): {line}" in text
        assert f"mean |standardized site effect| {format_number(result.mean_abs_site_effect(data))}" in text
        eta = s[s.test == "anova"].median_effect_size.iloc[0]
        assert f"median partial_eta2 (anova) {format_number(eta)}" in text
    assert str(result) == text and repr(result).startswith("<DiagnosticsResult: 150 rows x 7 features")


def test_standardized_site_effect_is_site_effect_sizes(sim, result):
    X, cov, Xh = sim
    for data, frame in (("raw", X), ("harmonized", Xh)):
        ref = dg.site_effect_sizes(frame, cov, batch="site", formula="age + sex")
        z = result.site_effect_matrix(data)
        assert list(z.index) == result.batches and list(z.columns) == result.features
        np.testing.assert_allclose(z.to_numpy().ravel(), ref["shift"].to_numpy(), rtol=1e-12)
        assert result.mean_abs_site_effect(data) == pytest.approx(np.abs(ref["shift"]).mean(), rel=1e-14)


def test_to_dir_and_to_csv(result, tmp_path):
    paths = result.to_dir(tmp_path / "new" / "dir")
    assert [p.name for p in paths] == [f"{k}.csv" for k in result]
    assert sorted(os.listdir(tmp_path / "new" / "dir")) == sorted(f"{k}.csv" for k in result)  # no temporaries
    for name, table in result.items():
        back = pd.read_csv(tmp_path / "new" / "dir" / f"{name}.csv", keep_default_na=False, na_values=["", "NaN"])
        assert list(back.columns) == list(table.columns) and len(back) == len(table)
        num = table.select_dtypes("number").columns
        np.testing.assert_allclose(back[num].to_numpy(float), table[num].to_numpy(float), rtol=1e-15)
    assert result.to_csv(table="multivariate") == (tmp_path / "new" / "dir" / "multivariate.csv").read_text()
    result.to_csv(tmp_path / "one.csv", table="covariate_balance")
    assert (tmp_path / "one.csv").read_text() == result.to_csv(table="covariate_balance")
    # all or nothing: one output is a folder, so no table is written
    target = tmp_path / "clash"
    (target / "multivariate.csv").mkdir(parents=True)
    with pytest.raises(fh.exceptions.FeatharmError, match="directory"):
        result.to_dir(target)
    assert os.listdir(target) == ["multivariate.csv"]


def test_repr_html_escapes_names(sim):
    X, cov, _ = sim
    cov = cov.assign(site=cov.site.replace({"site01": "<b>x</b>"}))
    r = dg.diagnose(X.rename(columns={X.columns[0]: "<script>"}), cov, formula="age + sex", n_permutations=0,
                    classification=False, multivariate=False)
    h = r._repr_html_()
    assert "<script>" not in h and "<b>x</b>" not in h and "&lt;b&gt;x&lt;/b&gt;" in h
    assert h.count("<tr") == 1 + 6  # header + one row per test


def test_plot_accessors_draw_the_tables(result):
    fig = result.plot_site_effects()
    ims = [a.images[0] for a in fig.axes if a.images]
    assert len(ims) == 2 and ims[0].get_clim() == ims[1].get_clim()
    np.testing.assert_array_equal(ims[0].get_array(), result.site_effect_matrix("raw").to_numpy())
    np.testing.assert_array_equal(ims[1].get_array(), result.site_effect_matrix("harmonized").to_numpy())
    assert [a.get_title() for a in fig.axes if a.images] == ["before harmonization", "after harmonization"]
    fig = result.plot_site_effects(value="log_var_ratio")
    np.testing.assert_array_equal([a for a in fig.axes if a.images][0].images[0].get_array(),
                                  result.site_effect_matrix("raw", "log_var_ratio").to_numpy())
    fig = result.plot_pvalues()
    ims = [a.images[0] for a in fig.axes if a.images]
    se = result["site_effects"]
    raw = se[se.data == "raw"].pivot(index="test", columns="feature", values="p_unc")
    raw = raw.loc[list(result.tests), result.features]
    np.testing.assert_allclose(ims[0].get_array(), -np.log10(raw.to_numpy()))
    fig = result.plot_preservation()
    panels = [a for a in fig.axes if a.get_visible()]
    assert len(panels) == 2 and panels[0].get_title().startswith("age: Lin's CCC")
    pres = result["preservation"]
    np.testing.assert_allclose(panels[0].collections[0].get_offsets(),
                               pres[pres.covariate == "age"][["partial_r2_before", "partial_r2_after"]].to_numpy())


def test_integer_seed_gives_each_function_s_numbers(sim, result):
    X, cov, _ = sim
    perm = dg.permanova(X, cov, formula="age + sex", n_permutations=19, random_state=3)
    mv = result["multivariate"]
    assert mv[(mv.data == "raw") & (mv.test == "permanova")].p_unc.iloc[0] == perm.p_unc.iloc[0]
    clf = dg.site_classification(X, cov, formula="age + sex", n_repeats=1, n_permutations=2, random_state=3)
    ours = result["site_classification"]
    pd.testing.assert_frame_equal(ours[ours.data == "raw"].drop(columns="data").reset_index(drop=True), clf)


def test_refit_warnings_are_kept(sim):
    X, cov, _ = sim
    cov = cov.copy()
    cov.loc[cov.index[:12], "site"] = "small"
    hm = fh.ComBat(batch="site", formula="age + sex")
    with pytest.warns(SmallBatchWarning):
        Xh = hm.fit_transform(X, cov)
        r = dg.diagnose(X, cov, formula="age + sex", X_harmonized=Xh, harmonizer=hm, n_permutations=0,
                        classification_permutations=0, n_repeats=1, random_state=0)
    assert r.options["harmonizer"] == "ComBat" and r.refit_warnings
    assert {w["category"] for w in r.refit_warnings} == {"SmallBatchWarning"}
    assert all("'small'" in w["message"] for w in r.refit_warnings)


def test_public_namespace_is_the_documented_api():
    names = {"diagnose", "DiagnosticsResult", "test_site_effects", "site_effect_sizes", "site_residuals",
             "Residuals", "permanova", "pc_covariance_tests", "site_classification", "biology_preservation",
             "Preservation", "covariate_balance", "site_mixing",
             "traveling_subject_reliability", "TravelingSubjectReliability"}
    assert set(dg.__all__) == names and sorted(dir(dg)) == sorted(names)
    for name in ("np", "pd", "stats", "COLUMNS", "TESTS", "DEFAULT_TESTS", "TABLES", "MULTIVARIATE_COLUMNS",
                 "CLASSIFICATION_COLUMNS", "PRESERVATION_COLUMNS", "PRESERVATION_SUMMARY_COLUMNS", "BALANCE_COLUMNS",
                 "site_anova"):
        assert not hasattr(dg, name), name
    from featharm.diagnostics import univariate

    assert univariate.COLUMNS[0] == "feature"  # still importable from the submodules
    for name in dg.__all__:  # every public name is documented
        assert getattr(dg, name).__doc__, name
