"""Simulated multi-site data with known site effects (the ComBat model of ``docs/methods.md`` §1.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Simulation:
    """What :func:`make_multisite` returns.

    Attributes
    ----------
    X : DataFrame
        Observed features (subjects × features), with site effects.
    covariates : DataFrame
        ``site``, ``age`` (years), ``sex`` (F/M), same index as ``X``.
    truth : DataFrame
        The same subjects without site effects: ``alpha + x'beta + sigma * eps``; what perfect
        harmonization would return.
    gamma, delta : DataFrame
        Planted additive shift (in units of sigma) and multiplicative scale per site × feature.
    beta : DataFrame
        Covariate effects (``age``, ``sex[T.M]``) per feature.
    """

    X: pd.DataFrame
    covariates: pd.DataFrame
    truth: pd.DataFrame
    gamma: pd.DataFrame
    delta: pd.DataFrame
    beta: pd.DataFrame


def make_multisite(n_subjects: int = 600, n_sites: int = 5, n_features: int = 30, *, unbalanced: bool = True,
                   site_age_shift: float = 0.0, age_effect: float = -0.01, sex_effect: float = 0.05,
                   random_state=None) -> Simulation:
    """Simulate ROI features from ``y = alpha + beta_age*age + beta_sex*sex + gamma_i*sigma + delta_i*sigma*eps``.

    Site sizes are unbalanced (Dirichlet proportions) unless ``unbalanced=False``; every site gets at
    least 3 subjects. ``site_age_shift`` moves each site's mean age (so age differs by site, a confounding
    that ComBat must handle by preserving age). Per-site ``gamma ~ N(mu_i, 0.5^2)`` with ``mu_i ~ N(0, 0.5^2)``,
    ``delta^2 ~ InvGamma``-like (log-normal around 1). Randomness only through ``random_state``.
    """
    rng = np.random.default_rng(random_state)
    if unbalanced:
        props = rng.dirichlet(np.full(n_sites, 2.0))
    else:
        props = np.full(n_sites, 1.0 / n_sites)
    counts = np.maximum(3, np.round(props * n_subjects).astype(int))
    counts[np.argmax(counts)] += n_subjects - counts.sum()
    site_idx = np.repeat(np.arange(n_sites), counts)
    rng.shuffle(site_idx)
    width = max(2, len(str(n_sites)))
    sites = np.array([f"site{i + 1:0{width}d}" for i in range(n_sites)])
    age_centre = 50 + site_age_shift * (np.arange(n_sites) - (n_sites - 1) / 2)
    age = np.clip(rng.normal(age_centre[site_idx], 12.0), 18, 95).round(1)
    sex = rng.choice(np.array(["F", "M"]), size=n_subjects)
    is_m = (sex == "M").astype(float)

    alpha = rng.uniform(2.0, 3.5, n_features)
    sigma = rng.uniform(0.1, 0.3, n_features)
    b_age = age_effect * rng.uniform(0.5, 1.5, n_features)
    b_sex = sex_effect * rng.uniform(-1, 1, n_features)
    mu = rng.normal(0, 0.5, n_sites)
    gamma = rng.normal(mu[:, None], 0.5, (n_sites, n_features))
    delta = np.exp(rng.normal(0, 0.3, n_sites))[:, None] * np.exp(rng.normal(0, 0.15, (n_sites, n_features)))
    eps = rng.standard_normal((n_subjects, n_features))

    biology = alpha + np.outer(age, b_age) + np.outer(is_m, b_sex)
    truth = biology + sigma * eps
    observed = biology + sigma * (gamma[site_idx] + delta[site_idx] * eps)

    ids = pd.Index([f"sub-{i:05d}" for i in range(n_subjects)], name="subject")
    feats = [f"roi{j:03d}" for j in range(n_features)]
    cov = pd.DataFrame({"site": sites[site_idx], "age": age, "sex": sex}, index=ids)
    site_index = pd.Index(sites, name="site")
    return Simulation(
        X=pd.DataFrame(observed, index=ids, columns=feats),
        covariates=cov,
        truth=pd.DataFrame(truth, index=ids, columns=feats),
        gamma=pd.DataFrame(gamma, index=site_index, columns=feats),
        delta=pd.DataFrame(delta, index=site_index, columns=feats),
        beta=pd.DataFrame(np.vstack([b_age, b_sex]), index=["age", "sex[T.M]"], columns=feats),
    )
