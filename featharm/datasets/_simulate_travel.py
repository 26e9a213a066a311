"""Simulated traveling-subject data with known site biases (the model of ``docs/methods.md`` §5.8)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class TravelingSimulation:
    """What :func:`make_traveling` returns.

    Attributes
    ----------
    X : DataFrame
        Observed features (scans × features).
    covariates : DataFrame
        ``subject``, ``site``, ``age`` (years at the scan: the subject's age plus the time since the first
        scan of the tour), ``sex``.
    truth : DataFrame
        The same scans without site effects: ``alpha + b_age age + b_sex sex + u_subject + noise_sd * eps``.
    bias : DataFrame
        Planted measurement bias (offset) of each site (site × feature), summing to zero over the sites.
    gain : DataFrame
        Planted gain of each site (site × feature; all 1 unless ``log_gain_sd > 0``), with geometric mean 1
        over the sites: ``X = bias_site + gain_site * truth``.
    noise_sd, subject_sd : float
        SD of the scan noise (repeat error) and of the subject effects.
    b_age : Series
        Planted effect of age (per year) of each feature.
    """

    X: pd.DataFrame
    covariates: pd.DataFrame
    truth: pd.DataFrame
    bias: pd.DataFrame
    gain: pd.DataFrame
    noise_sd: float
    subject_sd: float
    b_age: pd.Series


def make_traveling(n_subjects: int = 10, n_sites: int = 4, n_features: int = 20, *, coverage: float = 1.0,
                   repeat_prob: float = 0.3, bias_sd: float = 0.5, subject_sd: float = 1.0,
                   noise_sd: float = 0.2, log_gain_sd: float = 0.0, age_effect_sd: float = 0.02,
                   random_state=None) -> TravelingSimulation:
    """Simulate traveling subjects: the same people scanned at several sites, with known site biases.

    Per feature ``y = bias_site + gain_site t`` with the true value
    ``t = alpha + b_age age + b_sex sex + u_subject + noise_sd eps``, ``u ~ N(0, subject_sd^2)``,
    ``eps ~ N(0, 1)``, ``bias ~ N(0, bias_sd^2)`` centred to sum to zero over the sites and
    ``log gain ~ N(0, log_gain_sd^2)`` centred likewise (all gains 1 by default: additive biases only).
    Each subject is scanned at site 1 and at each other site with probability ``coverage`` (so the design is
    connected through site 1), once per site, or twice (a repeat on the same day) with probability
    ``repeat_prob``. The tour takes a few weeks: the age at each scan grows by
    0.02–0.1 years per site.

    Parameters
    ----------
    n_subjects, n_sites, n_features : int
        Sizes.
    coverage : float
        Probability that a subject is scanned at each site other than the first.
    repeat_prob : float
        Probability of a second scan of a subject at a site (the repeat variance of the diagnostics).
    bias_sd, subject_sd, noise_sd : float
        Spread of the site biases, of the subject effects and of the scan noise (feature units).
    log_gain_sd : float
        Spread of the log gains of the sites (0: no multiplicative site effect).
    age_effect_sd : float
        Spread of the per-year age effects.
    random_state : int, Generator or None
        Seed of a local generator.

    Returns
    -------
    TravelingSimulation
    """
    rng = np.random.default_rng(random_state)
    visits = rng.random((n_subjects, n_sites)) < coverage
    visits[:, 0] = True
    reps = np.where(visits, 1 + (rng.random((n_subjects, n_sites)) < repeat_prob), 0)
    subj, site = [], []
    for s in range(n_subjects):
        order = rng.permutation(np.flatnonzero(reps[s]))
        for k in order:
            subj += [s] * int(reps[s, k])
            site += [k] * int(reps[s, k])
    subj, site = np.asarray(subj), np.asarray(site)
    n, p = subj.size, n_features
    step = np.zeros(n)  # years since the subject's first scan: 0.02-0.1 per site visited before
    for s in range(n_subjects):
        rows = np.flatnonzero(subj == s)
        new_site = np.r_[True, site[rows][1:] != site[rows][:-1]]
        inc = new_site * rng.uniform(0.02, 0.1, size=rows.size)
        inc[0] = 0.0
        step[rows] = np.cumsum(inc)
    age0 = rng.uniform(20, 60, size=n_subjects)
    age = age0[subj] + step
    sex = rng.choice(["F", "M"], size=n_subjects)
    male = (sex[subj] == "M").astype(float)

    alpha = rng.uniform(2.0, 4.0, size=p)
    b_age = rng.normal(0.0, age_effect_sd, size=p)
    b_sex = rng.normal(0.1, 0.05, size=p)
    bias = rng.normal(0.0, bias_sd, size=(n_sites, p))
    bias -= bias.mean(axis=0)
    log_gain = rng.normal(0.0, log_gain_sd, size=(n_sites, p))
    gain = np.exp(log_gain - log_gain.mean(axis=0))
    u = rng.normal(0.0, subject_sd, size=(n_subjects, p))
    eps = rng.normal(0.0, 1.0, size=(n, p))
    fixed = alpha + np.outer(age, b_age) + np.outer(male, b_sex) + u[subj]
    truth = fixed + noise_sd * eps
    obs = bias[site] + gain[site] * truth

    ids = pd.Index([f"scan{i:04d}" for i in range(n)], name="scan")
    cols = [f"roi{j:03d}" for j in range(p)]
    sites = [f"site{k + 1:02d}" for k in range(n_sites)]
    cov = pd.DataFrame({"subject": [f"ts{s:03d}" for s in subj], "site": np.asarray(sites)[site], "age": age,
                        "sex": sex[subj]}, index=ids)
    return TravelingSimulation(
        X=pd.DataFrame(obs, index=ids, columns=cols), covariates=cov,
        truth=pd.DataFrame(truth, index=ids, columns=cols),
        bias=pd.DataFrame(bias, index=sites, columns=cols),
        gain=pd.DataFrame(gain, index=sites, columns=cols),
        noise_sd=float(noise_sd), subject_sd=float(subject_sd), b_age=pd.Series(b_age, index=cols, name="b_age"))
