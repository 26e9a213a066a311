"""Simulated longitudinal multi-site data with known truth (the model of ``docs/methods.md`` §3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class LongitudinalSimulation:
    """What :func:`make_longitudinal` returns.

    Attributes
    ----------
    X : DataFrame
        Observed features (scans × features) with site effects.
    covariates : DataFrame
        ``subject``, ``site``, ``age`` (years at the scan), ``sex``, ``time`` (years since baseline).
    truth : DataFrame
        The same scans without site effects: ``alpha + x'beta + u_subject + sigma * eps``.
    gamma, delta : DataFrame
        Planted site shift (units of sigma) and scale of the within-subject noise (site × feature),
        normalized so that ``sum_i n_i gamma_i = 0`` and ``sum_i n_i delta_i^2 = n`` (the harmonized
        target is then exactly the truth).
    icc : float
        True intra-class correlation ``tau2 / (tau2 + sigma2)`` of every feature.
    """

    X: pd.DataFrame
    covariates: pd.DataFrame
    truth: pd.DataFrame
    gamma: pd.DataFrame
    delta: pd.DataFrame
    icc: float


def make_longitudinal(n_subjects: int = 300, n_sites: int = 4, n_features: int = 40, *, visits=(2, 3, 4),
                      icc: float = 0.66, switch_prob: float = 0.3, gamma_sd: float = 0.5,
                      log_delta_sd: float = 0.3, random_state=None) -> LongitudinalSimulation:
    """Simulate repeated scans with a subject random intercept and site effects that change with the site.

    Each subject has 2-4 visits (``visits``) one year apart on average; its baseline site is random and,
    with probability ``switch_prob``, the subject moves to another site from a random later visit on.
    Per feature: ``y = alpha + beta_age age + beta_sex sex + beta_time time + u + gamma_site sigma +
    delta_site sigma eps`` with ``u ~ N(0, tau2)``, ``tau2 / (tau2 + sigma2) = icc`` and ``sigma2 + tau2 = 1``.

    Parameters
    ----------
    n_subjects, n_sites, n_features : int
        Sizes.
    visits : sequence of int
        Visit counts to draw from (uniformly).
    icc : float
        True intra-class correlation.
    switch_prob : float
        Probability that a subject changes site during follow-up.
    gamma_sd, log_delta_sd : float
        Spread of the site shifts (units of sigma) and of the log site scales.
    random_state : int, Generator or None
        Seed of a local generator.

    Returns
    -------
    LongitudinalSimulation
    """
    rng = np.random.default_rng(random_state)
    nv, subj, visit = _visits(rng, n_subjects, visits)
    n = subj.size
    time = visit + rng.uniform(-0.2, 0.2, size=n) * (visit > 0)
    age0 = rng.uniform(20, 80, size=n_subjects)
    sex = rng.choice(["F", "M"], size=n_subjects)
    base = rng.integers(0, n_sites, size=n_subjects)
    moves = rng.random(n_subjects) < switch_prob
    new = (base + rng.integers(1, n_sites, size=n_subjects)) % n_sites
    at = np.array([rng.integers(1, k) for k in nv])
    site = np.where(moves[subj] & (visit >= at[subj]), new[subj], base[subj])
    age = age0[subj] + time
    male = (sex[subj] == "M").astype(float)

    p = n_features
    tau2, sigma2 = icc, 1.0 - icc
    alpha = rng.uniform(2.0, 4.0, size=p)
    b_age = rng.normal(-0.01, 0.004, size=p)
    b_sex = rng.normal(0.1, 0.05, size=p)
    b_time = rng.normal(-0.03, 0.01, size=p)
    fixed = alpha + np.outer(age, b_age) + np.outer(male, b_sex) + np.outer(time, b_time)
    tables = _observe(rng, fixed, subj=subj, site=site, n_subjects=n_subjects, n_sites=n_sites, tau2=tau2,
                      sigma2=sigma2, gamma_sd=gamma_sd, log_delta_sd=log_delta_sd, age=age, sex=sex, time=time)
    return LongitudinalSimulation(**tables, icc=icc)


def _visits(rng, n_subjects: int, visits):
    """Each subject's number of scans (drawn from ``visits``), and per scan its subject and visit number."""
    nv = rng.choice(np.asarray(visits), size=n_subjects)
    return nv, np.repeat(np.arange(n_subjects), nv), np.concatenate([np.arange(k) for k in nv])


def _observe(rng, fixed, *, subj, site, n_subjects, n_sites, tau2, sigma2, gamma_sd, log_delta_sd, age, sex, time):
    """The scans of both simulators from their fixed effects (scans × features): subject intercepts, noise, site
    shifts and scales (centred and scaled over the scans), as the tables of a :class:`LongitudinalSimulation`."""
    n, p = fixed.shape
    u = rng.normal(0.0, np.sqrt(tau2), size=(n_subjects, p))
    eps = rng.normal(0.0, np.sqrt(sigma2), size=(n, p))
    counts = np.bincount(site, minlength=n_sites).astype(float)
    gamma = rng.normal(0.0, gamma_sd, size=(n_sites, p))
    gamma -= (counts @ gamma) / n
    delta = np.exp(rng.normal(0.0, log_delta_sd, size=(n_sites, p)))
    delta /= np.sqrt((counts @ delta**2) / n)
    truth = fixed + u[subj] + eps
    obs = fixed + u[subj] + np.sqrt(sigma2) * gamma[site] + delta[site] * eps
    ids = pd.Index([f"scan{i:05d}" for i in range(n)], name="scan")
    cols = [f"roi{j:03d}" for j in range(p)]
    sites = [f"site{k + 1:02d}" for k in range(n_sites)]
    cov = pd.DataFrame({"subject": [f"sub{s:04d}" for s in subj], "site": np.asarray(sites)[site],
                        "age": age, "sex": sex[subj], "time": time}, index=ids)
    return dict(X=pd.DataFrame(obs, index=ids, columns=cols), covariates=cov,
                truth=pd.DataFrame(truth, index=ids, columns=cols),
                gamma=pd.DataFrame(gamma, index=sites, columns=cols),
                delta=pd.DataFrame(delta, index=sites, columns=cols))


@dataclass
class LifespanSimulation(LongitudinalSimulation):
    """What :func:`make_lifespan` returns: :class:`LongitudinalSimulation` plus the true age curves.

    Attributes
    ----------
    curve : DataFrame
        The nonlinear part of the true age effect at every scan (scans × features; included in ``truth``).
    sigma : float
        Within-subject noise SD (``sqrt(1 - icc)``).
    """

    curve: pd.DataFrame = None
    sigma: float = 1.0


def lifespan_shape(age) -> np.ndarray:
    """Two nonlinear lifespan shapes (columns) of age in years, each ~unit range over 8-90 years: a rise to a
    peak in young adulthood then a decline (a gamma-like curve), and an accelerating decline in old age."""
    a = np.asarray(age, dtype=np.float64)
    rise = (a / 25.0) * np.exp(1.0 - a / 25.0)  # peak 1 at 25 years
    late = np.exp((a - 90.0) / 15.0)  # ~0 before 50, 1 at 90
    return np.column_stack([rise, late])


def make_lifespan(n_subjects: int = 1000, n_sites: int = 4, n_features: int = 40, *, visits=(1, 2, 3, 4, 5),
                  icc: float = 0.66, switch_prob: float = 0.3, curve_sd: float = 1.0, gamma_sd: float = 0.5,
                  log_delta_sd: float = 0.3, random_state=None) -> LifespanSimulation:
    """Simulate a lifespan study with follow-up scans: nonlinear age effects, a subject random intercept and
    site effects, the site changing within subjects.

    Sites recruit different age ranges (overlapping windows spread over 8-85 years at baseline, +-10 years around each centre), so a site's
    mean residual is confounded with the curvature a linear age term misses. Each subject has 1-5 visits
    (``visits``) 1-3 years apart; with probability ``switch_prob`` it moves to another site from a random
    later visit on. Per feature
    ``y = alpha + f(age) + beta_sex sex + u + gamma_site sigma + delta_site sigma eps``, with
    ``f = b_lin age + c1 rise(age) + c2 late(age)`` (:func:`lifespan_shape`; ``c ~ N(0, curve_sd)`` in units
    of the marginal SD), ``u ~ N(0, tau2)``, ``tau2 / (tau2 + sigma2) = icc``, ``tau2 + sigma2 = 1``. Site
    shifts and scales are normalized as in :func:`make_longitudinal`, so the harmonized target is ``truth``.

    Returns
    -------
    LifespanSimulation
    """
    rng = np.random.default_rng(random_state)
    nv, subj, visit = _visits(rng, n_subjects, visits)
    n = subj.size
    gaps = rng.uniform(1.0, 3.0, size=n) * (visit > 0)
    time = np.zeros(n)
    for k in range(1, int(nv.max())):  # cumulative follow-up time within each subject
        at = visit == k
        time[at] = time[np.flatnonzero(at) - 1] + gaps[at]
    base = rng.integers(0, n_sites, size=n_subjects)
    centre = np.linspace(20.0, 70.0, n_sites)[base]  # site i recruits around its own age range
    age0 = np.clip(centre + rng.uniform(-10.0, 10.0, size=n_subjects), 8.0, 85.0)
    sex = rng.choice(["F", "M"], size=n_subjects)
    moves = rng.random(n_subjects) < switch_prob
    new = (base + rng.integers(1, max(n_sites, 2), size=n_subjects)) % n_sites
    at = np.array([rng.integers(1, k) if k > 1 else 1 for k in nv])
    site = np.where(moves[subj] & (visit >= at[subj]), new[subj], base[subj])
    age = age0[subj] + time
    male = (sex[subj] == "M").astype(float)

    p = n_features
    tau2, sigma2 = icc, 1.0 - icc
    alpha = rng.uniform(2.0, 4.0, size=p)
    b_lin = rng.normal(-0.01, 0.004, size=p)
    b_sex = rng.normal(0.1, 0.05, size=p)
    coef = rng.normal(0.0, curve_sd, size=(2, p))
    curve = lifespan_shape(age) @ coef
    fixed = alpha + np.outer(age, b_lin) + curve + np.outer(male, b_sex)
    tables = _observe(rng, fixed, subj=subj, site=site, n_subjects=n_subjects, n_sites=n_sites, tau2=tau2,
                      sigma2=sigma2, gamma_sd=gamma_sd, log_delta_sd=log_delta_sd, age=age, sex=sex, time=time)
    return LifespanSimulation(**tables, icc=icc, curve=pd.DataFrame(curve, index=tables["X"].index,
                                                                   columns=tables["X"].columns),
                              sigma=float(np.sqrt(sigma2)))
