"""Federated ComBat (``featharm.federated``, one round) against R Distributed-ComBat (andy1764/Distributed-ComBat,
commit 45b5a259, ``distributedCombat_site`` / ``distributedCombat_central``, three rounds), on ``small_cs``.

Reference: ``outputs/dcombat__distributed`` (see ``README.md``): one node per site of ``small_cs`` (300 subjects,
20 features, 5 sites), ``mod`` = the columns ``age``, ``sexM``; parametric EB, no reference batch. ``messages/``
holds what the R protocol sends: round 1 ``W_kᵀW_k``, ``W_kᵀX_k`` and counts from each node, ``B̂`` and the
grand mean from the centre; round 2 each node's residual variance, the pooled variance from the centre.
featharm sends one summary per site and the centre returns the model; the estimates must agree to 1e-9.
``harmonized.csv`` is written with 11 significant digits (rounding <= 5e-11 here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featharm import federated as fed

pytestmark = pytest.mark.reference

REFERENCE = Path(__file__).parent
INPUTS = REFERENCE / "inputs" / "small_cs"
OUT = REFERENCE / "outputs" / "dcombat__distributed"
MESSAGES = OUT / "messages"
ATOL = 1e-9


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    cov = pd.read_csv(INPUTS / "covars.csv").set_index("subject_id")
    X = pd.read_csv(INPUTS / "features.csv")
    X.index = cov.index
    sites = sorted(cov["site"].unique())
    # R pools the priors across all features (small_cs mixes volumes and thicknesses)
    p = fed.plan(batch="site", batches=sites, formula="age + sex", levels={"sex": ["F", "M"]},
                 features=list(X.columns), priors="pool")
    folder = tmp_path_factory.mktemp("dcombat")
    paths = []
    for site in sites:  # one node per site, as the R run
        rows = (cov["site"] == site).to_numpy()
        s = fed.summarize(X[rows], cov[rows], p)
        paths.append(folder / f"{site}.fhs")
        s.save(paths[-1])
    model = fed.combine(paths, p)
    return model, model.transform(X, cov), X, sites


def _table(name, index="batch"):
    return pd.read_csv(OUT / name).set_index(index)


def _max(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))


def test_harmonized(fitted):
    _, H, X, _ = fitted
    ref = pd.read_csv(OUT / "harmonized.csv")
    assert list(ref.columns) == list(X.columns)
    assert _max(H.to_numpy(), ref.to_numpy()) <= ATOL


@pytest.mark.parametrize("name", ["gamma_hat", "delta_hat", "gamma_star", "delta_star"])
def test_batch_estimates(fitted, name):
    model, _, X, sites = fitted
    ref = _table(f"{name}.csv")
    assert list(ref.index) == sites and list(ref.columns) == list(X.columns)
    assert _max(model._arr[name], ref.to_numpy()) <= ATOL


def test_sigma_and_priors(fitted):
    model, _, X, sites = fitted
    sigma = pd.read_csv(OUT / "sigma.csv").set_index("feature")["sigma"]
    assert list(sigma.index) == list(X.columns)
    assert _max(model._arr["sigma"], sigma) <= ATOL
    pri = _table("priors.csv")
    for col in ("gamma_bar", "tau2", "a_prior", "b_prior"):
        assert _max(model._arr[col], pri.loc[sites, col]) <= ATOL, col


def test_what_the_r_centre_computes_from_three_rounds(fitted):
    """B̂ (batch intercepts and covariate slopes), the grand mean and the pooled variance that R's centre
    sends back after rounds 1 and 2 are what featharm's centre computes from one summary per site."""
    model, _, _, sites = fitted
    B = pd.read_csv(MESSAGES / "round1_centre_B_hat.csv").set_index("term")
    assert list(B.index) == [*sites, "age", "sexM"]
    assert _max(model._arr["batch_coef"], B.loc[sites].to_numpy()) <= ATOL
    assert _max(model._arr["beta"], B.loc[["age", "sexM"]].to_numpy()) <= ATOL
    grand = pd.read_csv(MESSAGES / "round1_centre_grand_mean.csv").set_index("feature")["grand_mean"]
    assert _max(model._arr["alpha"], grand) <= ATOL
    var = pd.read_csv(MESSAGES / "round2_centre_var_pooled.csv").set_index("feature")["var_pooled"]
    assert _max(model._arr["sigma"] ** 2, var) <= ATOL
