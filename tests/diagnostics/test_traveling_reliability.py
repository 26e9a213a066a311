"""Traveling-subject reliability (``featharm.diagnostics.traveling_subject_reliability``, docs/methods.md §6.10).

Oracles: Shrout & Fleiss's ICC(2,1) and ICC(3,1) from the two-way ANOVA mean squares of a complete design
(written out below with pandas group means, independently of the package's least-squares fit); the pooled
within-subject SD and the repeat variance from pandas ``groupby``; the planted site biases of
:func:`featharm.datasets.make_traveling`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.datasets import make_traveling
from featharm.diagnostics.traveling import RELIABILITY_COLUMNS, RELIABILITY_SUMMARY_COLUMNS
from featharm.exceptions import AlignmentError, DisconnectedSitesError, InputError

rel = fh.diagnostics.traveling_subject_reliability


def _shrout_fleiss(y: pd.DataFrame):
    """ICC(2,1) and ICC(3,1) of a subjects × sites table (one scan per cell)."""
    n, k = y.shape
    grand = y.to_numpy().mean()
    ss_r = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_c = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_e = ((y.to_numpy() - grand) ** 2).sum() - ss_r - ss_c
    ms_r, ms_c, ms_e = ss_r / (n - 1), ss_c / (k - 1), ss_e / ((n - 1) * (k - 1))
    icc2 = (ms_r - ms_e) / (ms_r + (k - 1) * ms_e + k * (ms_c - ms_e) / n)
    icc3 = (ms_r - ms_e) / (ms_r + (k - 1) * ms_e)
    return icc2, icc3


@pytest.fixture(scope="module")
def complete():
    """Every subject scanned once at every site (the design of Shrout & Fleiss's ICC)."""
    return make_traveling(n_subjects=15, n_sites=4, n_features=6, repeat_prob=0.0, random_state=11)


def test_icc_equals_shrout_fleiss_in_a_complete_design(complete):
    X, cov = complete.X, complete.covariates
    res = rel(X, cov)
    tab = res["raw"]
    for f in X.columns:
        wide = pd.DataFrame({"s": cov["subject"], "k": cov["site"], "y": X[f]}).pivot(index="s", columns="k",
                                                                                        values="y")
        icc2, icc3 = _shrout_fleiss(wide)
        assert tab.loc[f, "icc"] == pytest.approx(icc2, rel=1e-10)
        assert tab.loc[f, "icc_consistency"] == pytest.approx(icc3, rel=1e-10)
        # within-subject between-site SD: the pooled SD of each subject's scans across sites
        sd = np.sqrt(wide.var(axis=1, ddof=1).mean())
        assert tab.loc[f, "between_site_sd"] == pytest.approx(sd, rel=1e-12)
    assert (tab["repeat_df"] == 0).all() and tab["repeat_var"].isna().all() and tab["site_to_repeat"].isna().all()
    assert tab["site_to_residual"].notna().all()


def test_repeat_variance_is_the_pooled_same_site_variance():
    ts = make_traveling(n_subjects=12, n_sites=3, n_features=5, repeat_prob=0.5, random_state=2)
    tab = rel(ts.X, ts.covariates)["raw"]
    df = ts.X.join(ts.covariates[["subject", "site"]])
    grp = df.groupby(["subject", "site"])
    dev = ts.X - grp[list(ts.X.columns)].transform("mean")
    dof = (grp.size() - 1).sum()
    np.testing.assert_allclose(tab["repeat_var"], (dev**2).sum() / dof, rtol=1e-12)
    assert (tab["repeat_df"] == dof).all() and dof > 0
    # cells with repeats enter the between-site SD through their mean: the oracle below averages first
    means = grp[list(ts.X.columns)].mean().reset_index()
    per = means.groupby("subject")[list(ts.X.columns)]
    travel = per.size() >= 2
    ss = ((means[list(ts.X.columns)] - per.transform("mean")) ** 2).groupby(means["subject"]).sum()[travel].sum()
    np.testing.assert_allclose(tab["between_site_sd"], np.sqrt(ss / (per.size()[travel] - 1).sum()), rtol=1e-12)


def test_site_variance_before_and_after(complete):
    ts = make_traveling(n_subjects=40, n_sites=4, n_features=200, random_state=3)
    res = rel(ts.X, ts.covariates, harmonized={"truth": ts.truth})
    raw, truth = res["raw"], res["truth"]
    planted = (ts.bias**2).sum(axis=0) / 3  # the variance of the planted biases over the 4 sites
    # unbiased moment estimates: on average the planted spread (raw) and 0 (no site effect)
    assert raw["site_var"].mean() == pytest.approx(planted.mean(), rel=0.05)
    assert abs(truth["site_var"].mean()) < 0.1 * truth["residual_var"].mean() / 40
    assert (truth["icc"] > raw["icc"]).all()
    np.testing.assert_allclose(truth["icc"], truth["icc_consistency"], atol=0.02)
    s = res.summary_table.set_index("data")
    assert list(res.summary_table.columns) == RELIABILITY_SUMMARY_COLUMNS
    assert list(res.table.columns) == RELIABILITY_COLUMNS
    assert s.loc["raw", "between_site_sd_ratio"] == 1.0 and s.loc["truth", "between_site_sd_ratio"] < 0.5
    text = res.summary()
    assert text.count("\n") == 2 and "truth: between-site SD" in text and "ICC(A,1)" in text


def test_a_single_harmonized_table_is_named_harmonized(complete):
    X, cov = complete.X, complete.covariates
    hm = fh.TravelingSubjects().fit(X, cov)
    res = rel(X, cov, harmonized=hm.transform(X, cov).iloc[::-1])  # rows matched by index
    assert list(dict.fromkeys(res.table["data"])) == ["raw", "harmonized"]
    # corrected on the scans it was fitted on: no site variance left beyond the noise
    assert (res["harmonized"]["site_to_residual"] < 0).all()
    assert (res["harmonized"]["icc"] >= res["raw"]["icc"]).all()


def test_missing_values_use_each_features_observed_scans():
    ts = make_traveling(n_subjects=20, n_sites=3, n_features=4, repeat_prob=0.3, random_state=4)
    X = ts.X.copy()
    X.iloc[[0, 5, 9, 17], 2] = np.nan
    tab = rel(X, ts.covariates)["raw"]
    rows = X["roi002"].notna()
    alone = rel(X.loc[rows, ["roi002"]], ts.covariates[rows])["raw"]
    pd.testing.assert_series_equal(tab.loc["roi002"], alone.loc["roi002"], check_exact=False, rtol=1e-12)
    assert tab.loc["roi002", "n_scans"] == rows.sum() and tab.loc["roi000", "n_scans"] == len(X)


def test_errors_name_what_is_wrong(complete):
    X, cov = complete.X, complete.covariates
    split = cov.assign(subject=np.where(cov["site"].isin(["site01", "site02"]), cov["subject"], cov["subject"] + "b"))
    with pytest.raises(DisconnectedSitesError, match=r"\['site03', 'site04'\]"):
        rel(X, split)
    with pytest.raises(AlignmentError, match="missing columns \\['roi000'\\]"):
        rel(X, cov, harmonized={"h": X.drop(columns="roi000")})
    with pytest.raises(InputError, match="other than 'raw'"):
        rel(X, cov, harmonized={"raw": X})
    with pytest.raises(InputError, match="DataFrame"):
        rel(X.to_numpy(), cov)
    with pytest.raises(ValueError, match="no subject column 'id'"):
        rel(X, cov, subject="id")


def test_readme_reliability_block_runs():
    """The README's validation block, with a ComBat and a TravelingSubjects output for its placeholders."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = text.index("Any harmonizer can be **validated**")
    code = re.search(r"```python\n(.*?)```", text[start:], flags=re.S).group(1)
    ts = make_traveling(n_subjects=20, n_sites=3, n_features=8, random_state=6)
    ns = {"fh": fh, "X_ts": ts.X, "cov_ts": ts.covariates,
          "Xh_combat": fh.ComBat().fit_transform(ts.X, ts.covariates),
          "Xh_ts": fh.TravelingSubjects().fit_transform(ts.X, ts.covariates)}
    exec(compile(code, "README.md", "exec"), ns)
    assert list(dict.fromkeys(ns["res"].table["data"])) == ["raw", "combat", "traveling"]
