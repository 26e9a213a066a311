#!/usr/bin/env python
"""Peak memory and time of CovBat's fit, transform and fit_transform (and ComBat's, for scale).

Peak memory is what ``tracemalloc`` sees allocated during the call (numpy buffers included) above what
existed before it, as a multiple of the input feature array (n × p float64). The data are those of
``bench_families.py`` (10 sites, age + sex). ``--n-components`` close to p is the hard case: the score
matrices are then about the size of the input. Run single-threaded for stable timings::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_covbat_memory.py --n 5000 --p 2000 --n-components 1500
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import featharm  # noqa: E402
from bench_families import make_data  # noqa: E402


def measure(label, fn, input_bytes):
    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{label:34s} peak {peak / 1e9:6.3f} GB = {peak / input_bytes:4.2f}x input   {dt:7.2f} s", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--p", type=int, default=2000)
    ap.add_argument("--n-components", type=int, default=None, help="default: percent_var = 0.95")
    args = ap.parse_args(argv)
    X, cov = make_data(args.n, args.p)
    nbytes = X.to_numpy().nbytes
    print(f"n = {args.n}, p = {args.p}, input {nbytes / 1e9:.3f} GB")
    kw = {} if args.n_components is None else {"n_components": args.n_components}
    model = featharm.CovBat(batch="site", formula="age + sex", **kw)
    measure("CovBat fit", lambda: model.fit(X, cov), nbytes)
    print(f"K = {model.n_components_}")
    measure("CovBat transform", lambda: model.transform(X, cov), nbytes)
    measure("CovBat fit_transform", lambda: featharm.CovBat(batch="site", formula="age + sex", **kw)
            .fit_transform(X, cov), nbytes)
    measure("ComBat fit_transform (for scale)", lambda: featharm.ComBat(batch="site", formula="age + sex")
            .fit_transform(X, cov), nbytes)


if __name__ == "__main__":
    main()
