#!/usr/bin/env python
"""Time featharm's site-effect diagnostics (the whole suite without permutation tests) and a per-feature
loop over scipy/statsmodels (what a straightforward Python port of ComBatFamQC does), in one process.

Data: ``featharm.datasets._simulate.make_multisite`` with n = 5,000 subjects, p = 400 features, 10 sites,
covariates ``age + sex`` (the issue's case; ComBatFamQC 1.0.6 takes 112 s and 3.5 GB there, MDMR alone
58 s: ``../shared/reference/README.md``; R is not installed here, so that figure is quoted, not re-run).

featharm (``featharm.diagnostics.diagnose``, ``n_permutations=0``, ``classification_permutations=0``):

* per-feature tests: ANOVA partial F, Kruskal-Wallis, Levene, Brown-Forsythe, Bartlett, Fligner-Killeen,
  BH-FDR and Bonferroni per test;
* per-site shifts and log variance ratios;
* PERMANOVA/MDMR pseudo-F and pseudo-R2 with MDMR's analytic p-value (no permutations), MANOVA (Pillai)
  and Box's M on 10 PCs;
* site classification: 5-fold CV, 1 repeat, multinomial logistic regression, covariates residualized in
  the folds;
* covariate balance.

The peer (``--peer-features`` features, extrapolated to p): per feature, statsmodels OLS of the full and
reduced model (``compare_f_test``), then ``scipy.stats`` kruskal, levene (mean and median), bartlett,
fligner on the residuals. Its p-values are compared with featharm's.

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_diagnostics.py
    python benchmarks/bench_diagnostics.py --repeat 5 --peer-features 40
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np


def run_featharm(X, cov, classification=True):
    from featharm.diagnostics import diagnose

    return diagnose(X, cov, batch="site", formula="age + sex", n_permutations=0, classification_permutations=0,
                    n_repeats=1, classification=classification, random_state=0)


def run_peer(X, cov, features):
    import statsmodels.formula.api as smf
    from scipy import stats

    df = cov.copy()
    out = {}
    site = cov["site"].to_numpy()
    levels = sorted(set(site))
    for f in features:
        df["y"] = X[f].to_numpy()
        full = smf.ols("y ~ age + sex + C(site)", df).fit()
        red = smf.ols("y ~ age + sex", df).fit()
        p_anova = full.compare_f_test(red)[1]
        b = full.params
        add = df["y"] - b["Intercept"] - b["age"] * df["age"] - b["sex[T.M]"] * (df["sex"] == "M")
        res = full.resid.to_numpy()
        ga = [add.to_numpy()[site == s] for s in levels]
        gr = [res[site == s] for s in levels]
        out[f] = {
            "anova": p_anova,
            "kruskal_wallis": stats.kruskal(*ga).pvalue,
            "levene": stats.levene(*gr, center="mean").pvalue,
            "brown_forsythe": stats.levene(*gr, center="median").pvalue,
            "bartlett": stats.bartlett(*gr).pvalue,
            "fligner_killeen": stats.fligner(*gr).pvalue,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--p", type=int, default=400)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="timed featharm runs after one warm-up (median)")
    ap.add_argument("--peer-features", type=int, default=20, help="features the per-feature loop runs on")
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args()

    from featharm.datasets._simulate import make_multisite

    sim = make_multisite(n_subjects=args.n, n_sites=args.sites, n_features=args.p, random_state=0)
    X, cov = sim.X, sim.covariates
    print(f"n = {args.n}, p = {args.p}, sites = {args.sites}; python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")

    run_featharm(X, cov)  # warm-up (imports, caches)
    times, times_nc = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        tables = run_featharm(X, cov)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_featharm(X, cov, classification=False)
        times_nc.append(time.perf_counter() - t)
    tracemalloc.start()
    run_featharm(X, cov)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    med = statistics.median(times)
    print(f"featharm diagnose (whole suite, no permutations): median {med:.2f} s (min {min(times):.2f}); "
          f"without the classification {statistics.median(times_nc):.2f} s; peak Python allocations "
          f"{peak / 2**20:.0f} MB (input {X.to_numpy().nbytes / 2**20:.0f} MB)")

    if not args.skip_peer:
        feats = list(X.columns[: args.peer_features])
        t = time.perf_counter()
        peer = run_peer(X, cov, feats)
        tp = time.perf_counter() - t
        per = tp / len(feats)
        print(f"per-feature loop (statsmodels OLS + scipy tests): {tp:.2f} s for {len(feats)} features = "
              f"{per * 1000:.0f} ms/feature -> {per * args.p:.1f} s for p = {args.p} "
              f"(featharm {per * args.p / statistics.median(times_nc):.0f}x faster without the classification, "
              "which the loop does not do)")
        se = tables["site_effects"]
        worst = 0.0
        for f in feats:
            for test, p in peer[f].items():
                ours = se[(se.feature == f) & (se.test == test)].p_unc.iloc[0]
                if p > 1e-300:
                    worst = max(worst, abs(ours - p) / p)
        print(f"max relative p-value difference featharm vs scipy/statsmodels on those features: {worst:.1e}")
    print("ComBatFamQC 1.0.6 (R, quoted from ../shared/reference/README.md): 112 s, 3.5 GB peak for this case")


if __name__ == "__main__":
    main()
