#!/usr/bin/env python
"""Time featharm's ComBat-GAM against neuroHarmonize's GAM (``harmonizationLearn(..., smooth_terms=["age"])``).

Cases (30 sites of unbalanced Dirichlet sizes, site mean ages 35-75, a quadratic age effect, sex, site
location and scale effects):

* ``small``: n = 1,000 subjects, p = 150 features (target for featharm: <= 0.1 s)
* ``large``: n = 10,000 subjects, p = 2,000 features (target: <= 5 s)

Everything runs in this one process on the same data. featharm is timed as ``fit_transform`` (median of
``--repeat`` runs): the default model (REML smoothing parameter per feature, all features at once) and
``compat="neuroHarmonize"`` (neuroHarmonize's seeded k-fold recipe, one feature at a time). neuroHarmonize
fits one statsmodels GAM per feature plus 55 for its k-fold search, so it is timed once, on the first
``--nh-features`` features (default: all 150 of the small case, 20 of the large one); its time per
feature and the extrapolation to all features are printed. On that subset the script also prints the max
abs difference between neuroHarmonize and featharm's compat mode (same seed), which should be ~1e-12.

Usage::

    python benchmarks/bench_gam.py                        # both cases
    python benchmarks/bench_gam.py --cases small --nh-features 20
    python benchmarks/bench_gam.py --blas-threads 0       # BLAS's own thread count (default: 1 thread)

neuroHarmonize is optional (``pip install --no-deps neuroHarmonize``); it imports ``nibabel`` at module
level for its NIfTI helpers only, so an empty stand-in module is registered when nibabel is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import time
import types
import warnings

import numpy as np
import pandas as pd

CASES = {"small": dict(n=1_000, p=150), "large": dict(n=10_000, p=2_000)}
TARGETS = {"small": 0.1, "large": 5.0}
NH_FEATURES = {"small": 150, "large": 20}
SITES = 30
SEED = 0


def make_data(n: int, p: int, sites: int = SITES, seed: int = SEED):
    """Deterministic data: ``(X, cov)`` with a quadratic age effect and site effects."""
    rng = np.random.default_rng([seed, n, p, sites])
    floor = max(10, n // 100)  # no site below 10 subjects (featharm would warn about small sites)
    sizes = floor + rng.multinomial(n - floor * sites, rng.dirichlet(np.full(sites, 0.7)))
    codes = np.repeat(np.arange(sites), sizes)
    rng.shuffle(codes)
    age = np.linspace(35, 75, sites)[codes] + rng.normal(0, 8, n)
    male = rng.integers(0, 2, n)
    u = (age - 55.0) / 20.0
    sd = rng.uniform(0.1, 0.5, p)
    mean = rng.uniform(1, 10, p) + sd * (np.outer(u, rng.normal(-0.5, 0.2, p))
                                         + np.outer(u * u, rng.normal(-0.6, 0.2, p))
                                         + np.outer(male, rng.normal(0.2, 0.1, p)))
    gamma = rng.normal(0, 0.5, (sites, p))
    delta = np.exp(rng.normal(0, 0.25, (sites, p)))
    Y = mean + sd * (gamma[codes] + delta[codes] * rng.standard_normal((n, p)))
    labels = np.array([f"site{i:02d}" for i in range(sites)], dtype=object)
    cov = pd.DataFrame({"site": labels[codes], "age": age, "sex": male.astype(float)})
    X = pd.DataFrame(Y, columns=[f"roi{j:05d}" for j in range(p)])
    return X, cov


def _median_time(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _neuroharmonize():
    try:
        import nibabel  # noqa: F401
    except ModuleNotFoundError:
        sys.modules.setdefault("nibabel", types.ModuleType("nibabel"))
    try:
        from neuroHarmonize import harmonizationLearn
    except ModuleNotFoundError:
        return None
    return harmonizationLearn


def run_case(name: str, repeat: int, nh_features: int, skip_nh: bool) -> dict:
    import featharm as fh

    n, p = CASES[name]["n"], CASES[name]["p"]
    X, cov = make_data(n, p)
    res = {"case": name, "n": n, "p": p}
    t, _ = _median_time(lambda: fh.ComBatGAM(batch="site", formula="sex", smooth="age").fit_transform(X, cov),
                        repeat)
    res["featharm"] = t
    k = min(nh_features, p)
    Xs = X.iloc[:, :k]
    t_c, Hc = _median_time(lambda: fh.ComBatGAM(batch="site", formula="sex", smooth="age",
                                                compat="neuroHarmonize", random_state=SEED).fit_transform(Xs, cov), 1)
    res["featharm_compat_subset"] = t_c
    res["nh_features"] = k
    learn = None if skip_nh else _neuroharmonize()
    if learn is not None:
        covs = pd.DataFrame({"SITE": cov["site"], "age": cov["age"], "sex": cov["sex"]})
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            _, Hnh = learn(Xs.to_numpy(), covs, smooth_terms=["age"], seed=SEED)
            res["neuroHarmonize_subset"] = time.perf_counter() - t0
        res["max_abs_diff_compat_vs_nh"] = float(np.abs(Hc.to_numpy() - Hnh).max())
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="small,large")
    ap.add_argument("--repeat", type=int, default=5, help="featharm runs per case (median reported)")
    ap.add_argument("--nh-features", type=int, default=None,
                    help="features given to neuroHarmonize (default: 150 small, 20 large)")
    ap.add_argument("--skip-nh", action="store_true", help="do not run neuroHarmonize")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="BLAS threads for every implementation (threadpoolctl; 0 = library default). "
                         "Default 1: on a shared machine multi-threaded BLAS on small matrices mostly spins")
    args = ap.parse_args(argv)
    import featharm

    limit = contextlib.nullcontext()
    if args.blas_threads > 0:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(args.blas_threads)
    print(f"featharm {featharm.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}; BLAS threads: {args.blas_threads or 'library default'}")
    with limit:
        for case in args.cases.split(","):
            r = run_case(case, args.repeat, args.nh_features or NH_FEATURES[case], args.skip_nh)
            k, p = r["nh_features"], r["p"]
            print(f"\n[{case}] n={r['n']}, p={p}, {SITES} sites")
            print(f"  featharm ComBatGAM (REML, all {p} features) : {r['featharm']:.3f} s "
                  f"(target <= {TARGETS[case]} s: {'met' if r['featharm'] <= TARGETS[case] else 'NOT met'})")
            print(f"  featharm compat='neuroHarmonize', {k} features : {r['featharm_compat_subset']:.2f} s")
            if "neuroHarmonize_subset" in r:
                nh = r["neuroHarmonize_subset"]
                full = nh / k * p
                print(f"  neuroHarmonize GAM, {k} features             : {nh:.2f} s ({nh / k:.3f} s per feature"
                      + (f"; {full:.0f} s extrapolated to {p}" if k < p else "") + ")")
                print(f"  ratio neuroHarmonize / featharm (all {p} features): {full / r['featharm']:.0f}x")
                print(f"  max |featharm compat - neuroHarmonize| on the {k} features: "
                      f"{r['max_abs_diff_compat_vs_nh']:.1e}")
            else:
                print("  neuroHarmonize: not run (not installed or --skip-nh)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
