#!/usr/bin/env python
"""Time featharm's site-effect diagnostics with their defaults, beside the faster options, the earlier default
(logistic-regression classification) and a per-feature loop over scipy/statsmodels, in one process.

Cases (``featharm.datasets._simulate.make_multisite``; ComBatFamQC 1.0.6 takes 112 s and 3.5 GB at
5,000 × 400, MDMR alone 58 s: ``../shared/reference/README.md``; R is not installed here, so that figure is
quoted, not re-run):

* n = 5,000 subjects × p = 400 features, 10 sites, ``age + sex``: the raw data alone, and raw plus harmonized
  (``ComBat(formula="age + sex")`` on all rows as ``X_harmonized``, and the same model refitted inside every
  CV training fold for the site classification);
* the bundled IXI table (556 × 68 regional thickness, 3 sites, ``age + sex``), raw and raw + harmonized.

Per case the defaults of ``featharm.diagnostics.diagnose`` (what ``featharm diagnose`` and the HTML report
run): the six per-feature tests, per-site effects, PERMANOVA with 999 permutations and MDMR's analytic
p-value, MANOVA and Box's M on 10 PCs, site classification (LDA on each training fold's first 20 principal
components, stratified 5-fold CV × 2 repeats, a permutation null of at most 100 permutations with
Besag–Clifford stopping at h = 10), covariate balance, and with harmonized data preservation of biology.
Beside it, each default switched off in turn, so the differences say what each costs:
``n_permutations=0`` (no PERMANOVA permutations), ``classification_permutations=0`` (no classification
null), ``classification=False``, and both permutation settings at 0 (the old benchmark's setting). The earlier
default classifier (``classifier="logistic"``, 100 permutations, no stopping) is timed on IXI in full and
estimated at 5,000 × 400 from ``--legacy-permutations`` permutations.

``--cli`` also times ``featharm diagnose`` end to end (a new process: import, CSV reading, writing the tables)
on the 5,000 × 400 case with ``--harmonized`` and ``--model``.

Usage::

    flock /tmp/featharm-bench.lock python benchmarks/bench_diagnostics.py --repeat 3 --cli
    python benchmarks/bench_diagnostics.py --repeat 1 --skip-peer --skip-legacy     # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def timed(fn, repeat: int):
    """Median and min wall time of ``repeat`` calls after one warm-up, and the load average at the end."""
    out = fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), load(), out


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


def case(name, X, cov, Xh, model, args):
    """Time the defaults and the variants of one data set; print one line each."""
    from featharm.diagnostics import diagnose
    from featharm.diagnostics._parallel import diagnostics_threads

    base = dict(formula="age + sex", random_state=0)
    harm = dict(X_harmonized=Xh, harmonizer=model)
    variants = [
        ("defaults, raw", {}),
        ("defaults, raw + harmonized (model refitted in the folds)", harm),
        ("  the same on one thread (n_jobs=1)", {**harm, "n_jobs": 1}),
        ("  no PERMANOVA permutations (n_permutations=0)", {**harm, "n_permutations": 0}),
        ("  no classification null (classification_permutations=0)", {**harm, "classification_permutations": 0}),
        ("  no site classification (classification=False)", {**harm, "classification": False}),
        ("  no permutations at all (both 0)", {**harm, "n_permutations": 0, "classification_permutations": 0}),
        ("  classification null without stopping (classification_stop_after=None)",
         {**harm, "classification_stop_after": None}),
    ]
    print(f"\n{name}: n = {X.shape[0]}, p = {X.shape[1]}, sites = {cov['site'].nunique()}")
    results = {}
    for label, kw in variants:
        thr = kw.get("n_jobs") or diagnostics_threads(X.shape[0] * X.shape[1])  # featharm's choice just before
        med, mn, la, res = timed(lambda kw=kw: diagnose(X, cov, **base, **kw), args.repeat)
        results[label] = (med, res)
        clf = res["site_classification"] if "site_classification" in res else None
        extra = ""
        if clf is not None:
            extra = "; classification permutations run " + ", ".join(
                f"{d} {int(n)}" for d, n in clf.groupby("data", sort=False).n_permutations.max().items())
        print(f"  {label:75s} median {med:6.2f} s (min {mn:6.2f}), load {la}, threads {thr}{extra}", flush=True)
    d = [results[label][0] for label, _ in variants if "n_jobs" not in label]
    print(f"  what each default costs (raw + harmonized): PERMANOVA's 999 permutations {d[1] - d[2]:.2f} s, the "
          f"classification null {d[1] - d[3]:.2f} s, the classification's CV without its null {d[3] - d[4]:.2f} s, "
          f"everything else {d[4] - (d[1] - d[2]):.2f} s")
    return results


def legacy(X, cov, Xh, model, permutations: int, full: bool):
    """The earlier default classifier: multinomial logistic regression, every permutation refitted."""
    from featharm.diagnostics import diagnose

    kw = dict(formula="age + sex", random_state=0, n_permutations=999, classifier="logistic",
              classification_stop_after=None)
    out = {}
    for label, extra in (("raw", {}), ("raw + harmonized", dict(X_harmonized=Xh, harmonizer=model))):
        if full:
            t = time.perf_counter()
            diagnose(X, cov, **kw, **extra, classification_permutations=100)
            out[label] = (time.perf_counter() - t, "measured")
        else:
            t = time.perf_counter()
            diagnose(X, cov, **kw, **extra, classification_permutations=0)
            t0 = time.perf_counter() - t
            t = time.perf_counter()
            diagnose(X, cov, **kw, **extra, classification_permutations=permutations)
            per = (time.perf_counter() - t - t0) / permutations / (2 if extra else 1)
            out[label] = (t0 + per * 100 * (2 if extra else 1), f"estimated from {permutations} permutations "
                                                                 f"({per:.1f} s per permutation and data set)")
        print(f"  earlier default (logistic regression, 100 permutations), {label}: {out[label][0]:.1f} s "
              f"({out[label][1]}), load {load()}", flush=True)
    return out


def cli_time(X, cov, model, repeat: int):
    import featharm as fh

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        cov.join(X).rename_axis("subject").reset_index().to_csv(d / "data.csv", index=False)
        fh.save_model(model.fit(X, cov), d / "m.fhm")
        # this checkout's featharm (the installed console script may point at another)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        cmd = [sys.executable, "-c", "import sys; from featharm.cli import main; sys.exit(main(sys.argv[1:]))",
               "diagnose", str(d / "data.csv"), "--batch", "site", "--formula", "age + sex", "--id", "subject",
               "--model", str(d / "m.fhm"), "--out", str(d / "out"), "--quiet"]
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)  # the refits' small-site warnings
            ts.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import featharm, featharm.diagnostics, featharm.cli"], check=True,
                       env=env)
        imp = time.perf_counter() - t
    print(f"  featharm diagnose DATA --model M (harmonizes, then raw + harmonized, refits in the folds; new "
          f"process): median {statistics.median(ts):.2f} s (min {min(ts):.2f}; importing featharm {imp:.2f} s), "
          f"load {load()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--p", type=int, default=400)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per variant after one warm-up (median)")
    ap.add_argument("--peer-features", type=int, default=20, help="features the per-feature loop runs on")
    ap.add_argument("--legacy-permutations", type=int, default=2,
                    help="permutations of the logistic classifier timed at n x p (then extrapolated to 100)")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-legacy", action="store_true")
    ap.add_argument("--skip-ixi", action="store_true")
    ap.add_argument("--cli", action="store_true", help="also time featharm diagnose end to end")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # small-site warnings of the refits

    import featharm as fh
    from featharm.datasets._simulate import make_multisite

    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, load average {load()}")
    sim = make_multisite(n_subjects=args.n, n_sites=args.sites, n_features=args.p, random_state=0)
    X, cov = sim.X, sim.covariates
    model = fh.ComBat(batch="site", formula="age + sex")
    Xh = model.fit_transform(X, cov)
    big = case("simulated", X, cov, Xh, model, args)

    from featharm.diagnostics import diagnose

    tracemalloc.start()
    diagnose(X, cov, formula="age + sex", random_state=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"  peak Python allocations, defaults, raw: {peak / 2**20:.0f} MB (input {X.to_numpy().nbytes / 2**20:.0f} MB)")
    if args.cli:
        cli_time(X, cov, fh.ComBat(batch="site", formula="age + sex"), args.repeat)
    if not args.skip_legacy:
        legacy(X, cov, Xh, model, args.legacy_permutations, full=False)

    if not args.skip_ixi:
        data = fh.datasets.load_ixi()
        Xi = data[fh.datasets.ixi_feature_columns(data)]
        mi = fh.ComBat(batch="site", formula="age + sex")
        Xih = mi.fit_transform(Xi, data)
        case("IXI", Xi, data, Xih, mi, args)
        if not args.skip_legacy:
            legacy(Xi, data, Xih, mi, 0, full=True)

    if not args.skip_peer:
        feats = list(X.columns[: args.peer_features])
        t = time.perf_counter()
        peer = run_peer(X, cov, feats)
        tp = time.perf_counter() - t
        per = tp / len(feats)
        tables = big["defaults, raw"][1]
        print(f"\nper-feature loop (statsmodels OLS + scipy tests, 6 tests only): {tp:.2f} s for {len(feats)} features = "
              f"{per * 1000:.0f} ms/feature -> {per * args.p:.1f} s for p = {args.p}, load {load()}")
        se = tables["site_effects"]
        se = se[se.data == "raw"]
        worst = 0.0
        for f in feats:
            for test, p in peer[f].items():
                ours = se[(se.feature == f) & (se.test == test)].p_unc.iloc[0]
                if p > 1e-300:
                    worst = max(worst, abs(ours - p) / p)
        print(f"max relative p-value difference featharm vs scipy/statsmodels on those features: {worst:.1e}")
    print("ComBatFamQC 1.0.6 (R, quoted from ../shared/reference/README.md): 112 s, 3.5 GB peak at 5,000 x 400")


if __name__ == "__main__":
    main()
