"""Longitudinal ComBat on simulated data with known truth: what each ``standardize`` option does.

Truth (featharm.datasets._simulate_long.make_longitudinal): 300 subjects with 2-4 visits, 30% change
site during follow-up, 4 sites, subject random intercept with ICC 0.66, site shifts and site scales of the
within-subject noise (normalized so the harmonized target is exactly the site-free data).

Beer's algorithm (``standardize="reml"``, longCombat's default) standardizes conditional residuals by the
REML residual SD. The BLUPs absorb part of the noise, so the standardized residuals have variance below 1,
delta* comes out near 0.66-0.75 and dividing by sqrt(delta*) inflates the within-subject variance of the
output (~+35% here) and lowers the ICC (0.59 for a true 0.66). ``"msr"`` (standardize by the conditional
residuals' own SD) and ``"marginal"`` (standardize marginal residuals by the marginal SD) both keep the
within-subject variance and the ICC; ``"msr"`` also has the smallest RMSE to the truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featharm import LongComBat
from featharm.datasets._simulate_long import make_longitudinal
from featharm.mixed import fit_random_intercept


def _variance_components(Y: pd.DataFrame, cov: pd.DataFrame):
    W = np.column_stack([np.ones(len(cov)), cov["age"], cov["sex"] == "M", cov["time"]])
    fit = fit_random_intercept(Y.to_numpy(), W, cov["subject"].to_numpy())
    return fit.sigma2, fit.tau2


def summarize(sim, Xh) -> dict:
    s2, t2 = _variance_components(Xh, sim.covariates)
    s2_true, t2_true = _variance_components(sim.truth, sim.covariates)
    sd = sim.truth.std().to_numpy()
    return {
        "rmse": float(np.mean(np.sqrt(((Xh - sim.truth) ** 2).mean().to_numpy()) / sd)),
        "icc": float(np.mean(t2 / (t2 + s2))),
        "icc_truth": float(np.mean(t2_true / (t2_true + s2_true))),
        "within_ratio": float(np.mean(s2 / s2_true)),
    }


@pytest.fixture(scope="module")
def results():
    sim = make_longitudinal(n_subjects=300, n_features=30, random_state=11)
    out = {"raw": summarize(sim, sim.X)}
    for st in ("reml", "msr", "marginal"):
        hm = LongComBat(batch="site", subject="subject", time="time", formula="age + sex + time", standardize=st)
        res = summarize(sim, hm.fit_transform(sim.X, sim.covariates))
        n = hm.batch_sizes_.to_numpy()
        res["delta_star"] = float(np.mean(n @ hm.delta_star_.to_numpy() / n.sum()))
        out[st] = res
    return pd.DataFrame(out).T


def test_beer_inflates_within_subject_variance(results):
    r = results.loc["reml"]
    assert r["delta_star"] < 0.85
    assert r["within_ratio"] > 1.2
    assert r["icc"] < r["icc_truth"] - 0.04


@pytest.mark.parametrize("option", ["msr", "marginal"])
def test_corrections_keep_icc_and_within_variance(results, option):
    r = results.loc[option]
    assert 0.9 < r["delta_star"] < 1.1
    assert 0.9 < r["within_ratio"] < 1.1
    assert abs(r["icc"] - r["icc_truth"]) < 0.02
    assert abs(r["icc"] - r["icc_truth"]) < abs(results.loc["reml", "icc"] - r["icc_truth"]) / 3


def test_rmse_to_truth(results):
    raw = results.loc["raw", "rmse"]
    assert (results.loc[["reml", "msr", "marginal"], "rmse"] < 0.6 * raw).all()
    assert results.loc["msr", "rmse"] < results.loc["reml", "rmse"]
