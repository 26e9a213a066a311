#!/usr/bin/env python
"""Time featharm's LongComBatGAM against LongComBat and ComBatGAM in one process, and score all three against
the simulated truth.

Data: ``featharm.datasets.make_lifespan`` with 1,000 subjects of 1-5 visits (~3,000 scans) 1-3 years apart,
4 sites recruiting different age ranges (30 % of subjects change site during follow-up), 100 features with a
nonlinear lifespan age curve, a subject random intercept (ICC 0.66) and site shifts and scales.

Models (each family's defaults otherwise):

* ``LongComBatGAM(subject="subject", formula="sex", smooth="age")``: spline + random intercept, REML;
* ``LongComBat(subject="subject", formula="age + sex")``: linear age + random intercept (longCombat);
* ``ComBatGAM(formula="sex", smooth="age")``: spline, scans treated as independent (ComBat-GAM, REML).

Each is timed around ``fit_transform`` alone (one warm-up call, then ``--repeat`` calls): wall time
(``time.perf_counter``, median and min) and CPU time of the process (``time.process_time``, median; the
better figure on a busy machine), with ``standardize="reml"`` and ``"msr"`` for the two longitudinal families. Scores:
RMSE of the harmonized values to the truth in units of the within-subject noise SD (mean over features), and
the share of the true curvature kept (quadratic-to-quartic age coefficients of an OLS fit of the harmonized
data regressed on those of the truth; 1 = all of it).

Usage::

    flock /tmp/featharm-bench.lock python benchmarks/bench_longgam.py
    flock /tmp/featharm-bench.lock python benchmarks/bench_longgam.py --subjects 3000 --features 1000 --repeat 1
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

import featharm as fh  # noqa: E402
from featharm.datasets import make_lifespan  # noqa: E402


def _time(fn, repeat):
    out, times, cpu = fn(), [], []  # warm-up
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return out, times, cpu


def _curvature(Y, cov):
    a = (cov["age"].to_numpy() - 50.0) / 20.0
    W = np.column_stack([np.ones(len(a)), a, a**2, a**3, a**4, cov["sex"] == "M"])
    return np.linalg.lstsq(W, np.asarray(Y), rcond=None)[0][2:5]


def scores(sim, Xh):
    rmse = float(np.sqrt(((Xh - sim.truth) ** 2).mean()).mean() / sim.sigma)
    ct, ch = _curvature(sim.truth, sim.covariates), _curvature(Xh, sim.covariates)
    return rmse, float(np.sum(ch * ct) / np.sum(ct * ct))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args(argv)

    sim = make_lifespan(n_subjects=args.subjects, n_features=args.features, random_state=args.seed)
    X, cov = sim.X, sim.covariates
    n, p = X.shape
    res = {"n_scans": n, "n_subjects": args.subjects, "n_features": p, "machine": platform.platform(),
           "cpus": os.cpu_count(), "load_avg_before": os.getloadavg(), "runs": {}}
    print(f"data: {n} scans of {args.subjects} subjects, {p} features, 4 sites; load average "
          f"{res['load_avg_before'][0]:.2f} on {res['cpus']} CPUs")
    raw = scores(sim, X)
    print(f"{'raw data':24s} {'':47s}RMSE/sigma {raw[0]:.3f}   curvature kept {raw[1]:.3f}")
    res["raw"] = {"rmse_sigma": raw[0], "curvature_kept": raw[1]}
    models = {
        "LongComBatGAM reml": lambda: fh.LongComBatGAM(subject="subject", formula="sex", smooth="age"),
        "LongComBatGAM msr": lambda: fh.LongComBatGAM(subject="subject", formula="sex", smooth="age",
                                                      standardize="msr"),
        "LongComBat reml": lambda: fh.LongComBat(subject="subject", formula="age + sex"),
        "LongComBat msr": lambda: fh.LongComBat(subject="subject", formula="age + sex", standardize="msr"),
        "ComBatGAM (REML)": lambda: fh.ComBatGAM(formula="sex", smooth="age"),
    }
    for name, make in models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # subjects with one scan (by design), singular fits
            Xh, times, cpu = _time(lambda: make().fit_transform(X, cov), args.repeat)
        rmse, kept = scores(sim, Xh)
        med, best, cpu_med = statistics.median(times), min(times), statistics.median(cpu)
        print(f"{name:24s} wall {med:7.3f}s (min {best:6.3f}s)  CPU {cpu_med:6.3f}s   RMSE/sigma {rmse:.3f}   "
              f"curvature kept {kept:.3f}")
        res["runs"][name] = {"median_s": med, "min_s": best, "times_s": times, "cpu_median_s": cpu_med,
                             "rmse_sigma": rmse, "curvature_kept": kept}
    res["load_avg_after"] = os.getloadavg()
    print(f"load average after: {res['load_avg_after'][0]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
