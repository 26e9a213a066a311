#!/usr/bin/env python
"""Time NestedComBat's order search against OPNested's per-feature loop.

OPNested ComBat scores each order of the batch variables by calling ``scipy.stats.anderson_ksamp`` once per
feature and batch variable. featharm computes the test of every feature at once
(``featharm._core.ad.ad_ksamp``: one sort per column, cumulative counts per level). Both run here on the same
data, side by side:

* ``ad``: the Anderson–Darling test of ``p`` features across a variable's levels, vectorized vs the scipy loop
  (the largest difference of the statistics is printed);
* ``search``: ``NestedComBat(order="search")`` on 3 batch variables (15 ComBat fits, 6 AD counts) vs the same
  search written as the plain loop (18 ComBat fits, scipy per feature).

Usage::

    python benchmarks/bench_nested.py [--n 1000] [--p 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats

import featharm as fh
from featharm._core.ad import ad_ksamp


def data(n, p, seed=0):
    rng = np.random.default_rng(seed)
    cov = pd.DataFrame({"vendor": rng.choice(["GE", "Philips", "Siemens"], n),
                        "field": rng.choice(["1.5T", "3T"], n),
                        "software": rng.choice(["v1", "v2", "v3"], n),
                        "age": rng.uniform(20, 80, n), "sex": rng.choice(["F", "M"], n)},
                       index=[f"s{i}" for i in range(n)])
    Y = rng.normal(size=(n, p)) + 0.01 * cov["age"].to_numpy()[:, None]
    for v in ("vendor", "field", "software"):
        codes = pd.factorize(cov[v], sort=True)[0]
        Y += rng.normal(0, 0.5, (codes.max() + 1, p))[codes]
    return pd.DataFrame(Y, index=cov.index, columns=[f"f{j}" for j in range(p)]), cov


def scipy_loop(Y, codes):
    out = np.empty(Y.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in range(Y.shape[1]):
            out[j] = stats.anderson_ksamp([Y[codes == c, j] for c in np.unique(codes)], variant="midrank").statistic
    return out


def opnested_loop(X, cov, variables):
    best, counts = None, {}
    for order in itertools.permutations(variables):
        out = X
        for v in order:
            out = fh.ComBat(batch=v, formula="age + sex").fit_transform(out, cov)
        Y = out.to_numpy()
        total = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for v in variables:
                lv = cov[v].to_numpy()
                total += sum(stats.anderson_ksamp([Y[lv == x, j] for x in np.unique(lv)], variant="midrank").pvalue
                             < 0.05 for j in range(Y.shape[1]))
        counts[order] = total
        best = order if best is None or total < counts[best] else best
    return best


def timed(f, repeat):
    """Median wall time and CPU time (of this process: the machine is shared) of ``repeat`` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        res = f()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return (statistics.median(wall), statistics.median(cpu)), res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--p", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    X, cov = data(a.n, a.p)
    Y = X.to_numpy()
    codes = pd.factorize(cov["vendor"], sort=True)[0]
    t_vec, (stat, _) = timed(lambda: ad_ksamp(Y, codes, 3), a.repeat)
    t_loop, ref = timed(lambda: scipy_loop(Y, codes), a.repeat)
    print(f"ad: n={a.n} p={a.p} k=3  vectorized {t_vec[0]:.3f} s (CPU {t_vec[1]:.3f})  scipy loop {t_loop[0]:.3f} s "
          f"(CPU {t_loop[1]:.3f})  ratio {t_loop[0] / t_vec[0]:.1f}x  max |stat diff| {np.abs(stat - ref).max():.2e}")
    variables = ["vendor", "field", "software"]
    t_nc, hm = timed(lambda: fh.NestedComBat(batches=variables, formula="age + sex", criterion="ad").fit(X, cov), 1)
    t_op, best = timed(lambda: opnested_loop(X, cov, variables), 1)
    print(f"search: 3 variables, 6 orders  NestedComBat {t_nc[0]:.2f} s (CPU {t_nc[1]:.2f})  OPNested loop "
          f"{t_op[0]:.2f} s (CPU {t_op[1]:.2f})  ratio {t_op[0] / t_nc[0]:.1f}x  same order: {tuple(hm.order_) == best}")


if __name__ == "__main__":
    main()
