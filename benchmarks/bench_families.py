#!/usr/bin/env python
"""Time featharm's ComBatLS and CovBat; ComBatLS against the per-feature gamlss recipe in Python.

ComBatFamily's ``combatls`` fits one gamlss ``NO()`` model per feature (``y ~ age + sex + batch - 1``,
``sigma.formula = ~ age + sex``); its cost is p separate RS fits. featharm fits all features at once
(``featharm.models.combatls.fit_location_scale``). The Python peer of that per-feature loop is the
``gamlss`` package (a port of R gamlss 5.5-0; ``pip install gamlss``, benchmark only, GPL-3.0, never
imported by featharm). The peer runs side by side in this process on the same data. On the large case it is
timed on the first ``--peer-features`` features only and its total is extrapolated linearly (labelled
"est."); the max |difference| between featharm's and the peer's mean and log-SD coefficients on those
features is printed (gamlss stops at a deviance change < 0.001, so ~1e-4 is expected).

CovBat has no Python peer on PyPI (the Python port in CovBat_Harmonization is not packaged); featharm is
timed alone. R timings of both methods on data of the same shape (one core, package call only) are in
``../shared/reference/README.md`` and are quoted in benchmarks/README.md, not re-measured here.

Cases (10 sites, covariates age + sex, SD growing with age, site shifts and scales):
``small``: n = 1,000, p = 150; ``large``: n = 5,000, p = 400 (the sizes of the R timings).

Usage::

    python benchmarks/bench_families.py                       # both cases
    python benchmarks/bench_families.py --cases small --repeat 5
    python benchmarks/bench_families.py --skip-peer
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import pandas as pd

import featharm

CASES = {"small": (1000, 150), "large": (5000, 400)}


def make_data(n: int, p: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    m = 10
    site = np.array([f"site{k:02d}" for k in rng.choice(m, n, p=rng.dirichlet(np.full(m, 3.0)))])
    codes = np.unique(site, return_inverse=True)[1]
    age = np.round(rng.uniform(20, 85, n), 1)
    sex = rng.choice(["F", "M"], n)
    sd = np.exp(np.log(rng.uniform(0.1, 0.2, p)) + np.outer(age - 50, rng.uniform(0.0, 0.02, p)))
    gamma, delta = rng.normal(0, 0.5, (m, p)), np.exp(rng.normal(0, 0.2, (m, p)))
    Y = (3 + np.outer(age, rng.normal(-0.01, 0.003, p)) + np.outer(sex == "M", rng.normal(0.1, 0.03, p))
         + sd * (gamma[codes] + delta[codes] * rng.standard_normal((n, p))))
    X = pd.DataFrame(Y, columns=[f"roi{j:04d}" for j in range(p)])
    cov = pd.DataFrame({"site": site, "age": age, "sex": sex})
    return X, cov


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def peer_gamlss(X: pd.DataFrame, cov: pd.DataFrame, k: int):
    """Per-feature gamlss NO() fits of the first k features, as ComBatFamily's combatls does."""
    import gamlss as gl

    df = cov.copy()
    mu, sig = [], []
    control = gl.gamlss_control(trace=False)
    for col in X.columns[:k]:
        df["y"] = X[col].to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = gl.gamlss("y ~ age + sex + C(site) - 1", sigma_formula="~ age + sex", family=gl.NO(),
                            data=df, control=control)
        mu.append(fit.mu_coefficients)
        sig.append(fit.sigma_coefficients.to_numpy())
    return mu, np.array(sig).T


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="small,large")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer-features", type=int, default=40, help="features the peer fits on the large case")
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args(argv)
    for case in args.cases.split(","):
        n, p = CASES[case]
        X, cov = make_data(n, p)
        print(f"== {case}: n = {n}, p = {p}, 10 sites")
        ls = featharm.ComBatLS(batch="site", formula="age + sex", scale_formula="age + sex")
        t_ls, _ = timed(lambda: ls.fit_transform(X, cov), args.repeat)
        print(f"featharm ComBatLS fit_transform: {t_ls:.3f} s (median of {args.repeat}; "
              f"{ls.fit_n_iter_} location-scale iterations)")
        cb = featharm.CovBat(batch="site", formula="age + sex")
        t_cb, _ = timed(lambda: cb.fit_transform(X, cov), args.repeat)
        print(f"featharm CovBat fit_transform:   {t_cb:.3f} s (median of {args.repeat}; K = {cb.n_components_})")
        t_c, _ = timed(lambda: featharm.ComBat(batch="site", formula="age + sex").fit_transform(X, cov), args.repeat)
        print(f"featharm ComBat fit_transform:   {t_c:.3f} s (for scale)")
        if args.skip_peer:
            continue
        try:
            import gamlss  # noqa: F401
        except ImportError:
            print("peer gamlss not installed (pip install gamlss): skipped")
            continue
        k = p if case == "small" else min(p, args.peer_features)
        t0 = time.perf_counter()
        mu, sig = peer_gamlss(X, cov, k)
        t_peer = time.perf_counter() - t0
        total = t_peer * p / k
        label = "" if k == p else f" (est. from {k} features: {t_peer:.1f} s)"
        print(f"peer gamlss per-feature fits:    {total:.1f} s{label}  -> featharm ComBatLS is "
              f"{total / t_ls:.0f}x faster (whole harmonization vs the peer's model fits alone)")
        d_sig = np.abs(sig - ls.scale_coef_.to_numpy()[:, :k]).max()
        d_age = max(abs(m_["age"] - b) for m_, b in zip(mu, ls.beta_.loc["age"].to_numpy()[:k]))
        print(f"  agreement on {k} features: max |log-SD coef diff| = {d_sig:.1e}, "
              f"max |age coef diff| = {d_age:.1e}")


if __name__ == "__main__":
    main()
