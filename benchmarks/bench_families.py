#!/usr/bin/env python
"""Time featharm's ComBatLS and CovBat; ComBatLS against the per-feature gamlss recipe in Python.

ComBatFamily's ``combatls`` fits one gamlss ``NO()`` model per feature (``y ~ age + sex + batch - 1``,
``sigma.formula = ~ age + sex``); its cost is p separate RS fits. featharm fits all features at once
(``featharm._core.location_scale.fit_location_scale``). The Python peer of that per-feature loop is the
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

``--r-parity`` instead runs ComBatFamily's ``combatls`` recipe with the gamlss port on the reference data
``tests/reference/inputs/small_cs`` and prints its distance to the R output and to featharm, with gamlss's
default ``c_crit = 0.001`` and with ``1e-12``.

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


def r_parity(c_crit: float) -> None:
    """ComBatFamily's combatls recipe with the gamlss port on tests/reference small_cs, against R and featharm."""
    from pathlib import Path

    import gamlss as gl

    from featharm._core import eb

    ref = Path(__file__).resolve().parents[1] / "tests" / "reference"
    cov = pd.read_csv(ref / "inputs" / "small_cs" / "covars.csv").set_index("subject_id")
    X = pd.read_csv(ref / "inputs" / "small_cs" / "features.csv").set_index(cov.index)
    R = pd.read_csv(ref / "outputs" / "combatls__comfamily" / "harmonized.csv").to_numpy()
    levels = sorted(cov["site"].unique())
    codes = np.searchsorted(levels, cov["site"].to_numpy())
    counts = np.bincount(codes).astype(float)
    df = cov.reset_index()
    male = (df["sex"] == "M").to_numpy()
    MU, SD = np.empty(X.shape), np.empty(X.shape)
    control = gl.gamlss_control(trace=False, c_crit=c_crit, n_cyc=500)
    for j, col in enumerate(X.columns):
        df["y"] = X[col].to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = gl.gamlss("y ~ C(site) - 1 + age + sex", sigma_formula="~ age + sex", family=gl.NO(), data=df,
                            control=control)
        b, c = fit.mu_coefficients, fit.sigma_coefficients
        site_b = np.array([b[f"site{lv}"] for lv in levels])
        MU[:, j] = counts / counts.sum() @ site_b + b["age"] * df["age"] + b["sexM"] * male
        SD[:, j] = np.exp(c["(Intercept)"] + c["age"] * df["age"] + c["sexM"] * male)
    Z = (X.to_numpy() - MU) / SD
    g = np.array([Z[codes == i].mean(axis=0) for i in range(len(levels))])
    d = np.array([Z[codes == i].var(axis=0, ddof=1) for i in range(len(levels))])
    pri = eb.eb_priors(g, d)
    gs, ds = np.empty_like(g), np.empty_like(d)
    for i in range(len(levels)):
        gs[i], ds[i], _, _ = eb.eb_parametric(g[i], d[i], d[i], counts[i], pri.gamma_bar[i], pri.tau2[i],
                                              pri.a_prior[i], pri.b_prior[i])
    H = SD * (Z - gs[codes]) / np.sqrt(ds[codes]) + MU
    F = featharm.ComBatLS(batch="site", formula="age + sex", scale_formula="age + sex").fit_transform(X, cov)
    print(f"combatls recipe with the gamlss port, c_crit = {c_crit:g}: max |recipe - R| = "
          f"{np.abs(H - R).max():.1e}, max |recipe - featharm| = {np.abs(H - F.to_numpy()).max():.1e} "
          f"(featharm - R: {np.abs(F.to_numpy() - R).max():.1e})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="small,large")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer-features", type=int, default=40, help="features the peer fits on the large case")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--r-parity", action="store_true",
                    help="only check the gamlss-port recipe against R and featharm on tests/reference small_cs")
    args = ap.parse_args(argv)
    if args.r_parity:
        for c_crit in (1e-3, 1e-12):
            r_parity(c_crit)
        return
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
