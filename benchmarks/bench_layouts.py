#!/usr/bin/env python
"""Time every model family on its own benchmark case for each input layout and container, in one process.

The cases are those of the families' benchmarks (their data generators are reused):

* ``ComBatGAM(formula="sex", smooth="age")``: ``bench_gam.py``'s large case, n = 10,000, p = 2,000, 30 sites;
* ``ComBatLS(formula="age + sex", scale_formula="age + sex")`` and ``CovBat(formula="age + sex")``:
  ``bench_families.py``'s large case, n = 5,000, p = 400, 10 sites;
* ``LongComBat(formula="age + sex + time")``: ``bench_longitudinal.py``'s case, 1,000 subjects with 2-4
  visits (3,040 scans), p = 100;
* ``ComBat(formula="age + sex")`` on the GAM case, for scale.

Each model's ``fit_transform`` is timed (median of ``--repeat``, after one warm-up; before each call a
scratch buffer of twice the data is touched and freed, as ``bench_combat.py --prefault 2`` does) on the
same values given
as ``frame`` (``pd.DataFrame`` of a C-ordered array: pandas copies it into column blocks), ``c-array``
(C-ordered ndarray), ``f-array`` (Fortran-ordered ndarray) and ``float32`` (a float32 DataFrame). The table
gives each input's time over the fastest float64 input (target: at most 1.3) and the largest difference
of its output from the ``f-array`` output.

Usage::

    python benchmarks/bench_layouts.py                 # all families
    python benchmarks/bench_layouts.py --models ComBatLS,CovBat --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the featharm of this checkout
sys.path.insert(1, str(HERE))

import featharm  # noqa: E402

INPUTS = ("frame", "c-array", "f-array", "float32")
TARGET_SPREAD = 1.3


def cases():
    """name -> (model factory, X DataFrame, covariates)."""
    import bench_families
    import bench_gam
    from featharm.datasets._simulate_long import make_longitudinal

    Xg, cg = bench_gam.make_data(10_000, 2_000)
    Xf, cf = bench_families.make_data(5_000, 400)
    sim = make_longitudinal(n_subjects=1000, n_features=100, random_state=0)
    return {
        "ComBatGAM": (lambda: featharm.ComBatGAM(batch="site", formula="sex", smooth="age"), Xg, cg),
        "ComBat": (lambda: featharm.ComBat(batch="site", formula="age + sex"), Xg, cg),
        "ComBatLS": (lambda: featharm.ComBatLS(batch="site", formula="age + sex", scale_formula="age + sex"), Xf, cf),
        "CovBat": (lambda: featharm.CovBat(batch="site", formula="age + sex"), Xf, cf),
        "LongComBat": (lambda: featharm.LongComBat(batch="site", subject="subject", time="time",
                                                   formula="age + sex + time"), sim.X, sim.covariates),
    }


def make_input(kind: str, X: pd.DataFrame):
    Y = X.to_numpy(dtype=np.float64)
    if kind == "frame":
        return pd.DataFrame(np.ascontiguousarray(Y), index=X.index, columns=X.columns)
    if kind == "c-array":
        return np.ascontiguousarray(Y)
    if kind == "f-array":
        return np.asfortranarray(Y)
    if kind == "float32":
        return pd.DataFrame(Y.astype(np.float32), index=X.index, columns=X.columns)
    raise ValueError(kind)


def median_time(fn, repeat: int, prefault_bytes: int = 0):
    from bench_combat import prefault

    times, out = [], None
    for _ in range(repeat):
        out = None
        prefault(prefault_bytes)  # see bench_combat.prefault: memory freed to the VM faults slowly
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ComBatGAM,ComBatLS,CovBat,LongComBat,ComBat")
    ap.add_argument("--inputs", default=",".join(INPUTS))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    inputs = [i.strip() for i in args.inputs.split(",") if i.strip()]
    print(f"featharm from {Path(featharm.__file__).parent}; {os.cpu_count()} cores; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS')}")
    print(f"{'model':<12}{'n x p':>14}{'input':>9}{'fit_transform s':>17}{'/ best':>8}{'max diff':>10}"
          f"{'out dtype':>10}{'load':>6}")
    worst = {}
    for name, (new, X, cov) in cases().items():
        if name not in models:
            continue
        cov = cov.set_axis(X.index) if not cov.index.equals(X.index) else cov
        rows, ref = [], None
        for kind in sorted(inputs, key=lambda k: k != "f-array"):
            Xi = make_input(kind, X)
            cov_i = cov
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new().fit_transform(Xi, cov_i)  # warm-up
                load = os.getloadavg()[0]
                t, out = median_time(lambda: new().fit_transform(Xi, cov_i), args.repeat, 2 * X.size * 8)
            arr = out.to_numpy()
            if ref is None:
                ref = arr
            rows.append((kind, t, float(np.abs(arr.astype(np.float64) - ref).max()), str(arr.dtype), load))
            del Xi, out, arr
        best = min(t for kind, t, *_ in rows if kind != "float32")
        worst[name] = max(t for kind, t, *_ in rows if kind != "float32") / best
        for kind, t, diff, dtype, load in rows:
            print(f"{name:<12}{X.shape[0]:>7,} x {X.shape[1]:<5,}{kind:>9}{t:>17.3f}{t / best:>8.2f}{diff:>10.2g}"
                  f"{dtype:>10}{load:>6.1f}", flush=True)
    print("\nslowest / fastest float64 input (target <= %.1f): " % TARGET_SPREAD
          + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
