#!/usr/bin/env python
"""Time featharm's LongComBat against longcombat-py (a Python port of R longCombat) in one process.

Data: ``featharm.datasets._simulate_long.make_longitudinal`` with 1,000 subjects of 2-4 visits (~3,000
scans), 4 sites (30 % of subjects change site), 100 features, model ``age + sex + time + (1 | subject)``,
REML, 30 EB iterations (both implementations' defaults = longCombat's).

Measured with ``time.perf_counter`` around the call only (data creation and imports excluded):

* featharm ``fit_transform`` (random intercept): one warm-up call, then ``--repeat`` calls, median and min;
  ``fit`` and ``transform`` separately (median);
* featharm with ``random_slope=True`` (the slower per-feature path) on ``--slope-features`` features,
  once, plus the per-feature cost;
* longcombat-py ``long_combat`` (statsmodels MixedLM per feature), ``--peer-repeat`` times (default 1);

then the max |difference| between the two harmonized tables in units of each feature's SD (lme4-free
comparison: both fit the same REML model; longcombat-py reports ~4.5e-5 against R).

Usage::

    python benchmarks/bench_longitudinal.py                     # the issue's case
    python benchmarks/bench_longitudinal.py --skip-peer --repeat 15
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_longitudinal.py   # single-threaded BLAS

The peer is optional: ``pip install --no-deps longcombat-py`` (its requirements, numpy/scipy/pandas/
statsmodels, are featharm's own).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import featharm  # noqa: E402
from featharm.datasets._simulate_long import make_longitudinal  # noqa: E402

FORMULA = "age + sex + time"


def _time(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--peer-repeat", type=int, default=1)
    ap.add_argument("--slope-features", type=int, default=20)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args(argv)

    sim = make_longitudinal(n_subjects=args.subjects, n_features=args.features, random_state=0)
    X, cov = sim.X, sim.covariates
    n, p = X.shape
    res = {"n_scans": n, "n_subjects": args.subjects, "n_features": p, "machine": platform.platform(),
           "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
           "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}
    print(f"data: {n} scans of {args.subjects} subjects, {p} features, 4 sites; load average "
          f"{res['load_avg'][0]:.1f} on {res['cpus']} CPUs; OPENBLAS_NUM_THREADS={res['OPENBLAS_NUM_THREADS']}")

    def model(**kw):
        return featharm.LongComBat(batch="site", subject="subject", time="time", formula=FORMULA, **kw)

    model().fit_transform(X, cov)  # warm-up (imports, BLAS thread pool)
    Xh, t_ft = _time(lambda: model().fit_transform(X, cov), args.repeat)
    fitted, t_fit = _time(lambda: model().fit(X, cov), args.repeat)
    _, t_tr = _time(lambda: fitted.transform(X, cov), args.repeat)
    res["featharm"] = {"fit_transform_median": statistics.median(t_ft), "fit_transform_min": min(t_ft),
                       "fit_median": statistics.median(t_fit), "transform_median": statistics.median(t_tr)}
    print(f"featharm LongComBat fit_transform: median {statistics.median(t_ft):.3f} s, min {min(t_ft):.3f} s "
          f"({args.repeat} runs); fit {statistics.median(t_fit):.3f} s, transform {statistics.median(t_tr):.3f} s")

    if args.slope_features:
        k = min(args.slope_features, p)
        _, t_sl = _time(lambda: model(random_slope=True).fit_transform(X.iloc[:, :k], cov), 1)
        res["featharm_random_slope"] = {"features": k, "seconds": t_sl[0], "per_feature": t_sl[0] / k}
        print(f"featharm LongComBat random_slope=True on {k} features: {t_sl[0]:.2f} s "
              f"({1000 * t_sl[0] / k:.0f} ms per feature; ~{t_sl[0] / k * p:.1f} s for all {p})")

    if not args.skip_peer:
        try:
            import longcombat
        except ImportError:
            print("longcombat-py is not installed (pip install --no-deps longcombat-py): peer skipped")
        else:
            cols = list(X.columns)
            data = cov.join(X)

            def peer():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return longcombat.long_combat(data, "site", "subject", "time", cols, FORMULA, "(1|subject)",
                                                  verbose=False)

            out, t_peer = _time(peer, args.peer_repeat)
            P = out.data_combat[[f"{c}.combat" for c in cols]].to_numpy()
            diff = float((np.abs(P - Xh.to_numpy()) / X.std().to_numpy()).max())
            med = statistics.median(t_peer)
            res["longcombat_py"] = {"seconds_median": med, "runs": args.peer_repeat,
                                    "max_abs_diff_sd_units": diff,
                                    "speedup": med / statistics.median(t_ft)}
            print(f"longcombat-py long_combat: {med:.2f} s ({args.peer_repeat} run(s)); featharm is "
                  f"{med / statistics.median(t_ft):.0f}x faster; max |featharm - longcombat-py| = {diff:.2e} x SD")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
