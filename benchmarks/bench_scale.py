"""Out-of-core ComBat (issue 16): ``featharm harmonize STORE.zarr ... --out OUT.zarr`` against one plain Dask
read-and-write pass over the same store, in the same run; peak resident memory of each (a child process each).

    flock /tmp/featharm-bench.lock python benchmarks/bench_scale.py --subjects 10000 --vertices 327684
    flock /tmp/featharm-bench.lock python benchmarks/bench_scale.py --subjects 4000 --vertices 81920 --scaling

The synthetic store (float32, ``--sites`` sites of unequal sizes, age and sex effects, site location and scale
effects) is written first (not timed), chunked as :func:`featharm.io.store.default_chunks` chooses. Then, each in
a fresh process: ``copy`` (``da.from_zarr`` -> ``da.to_zarr``: one read and one write, the floor) and
``harmonize`` (the command line: the fit reads the store once, the transform reads it again and writes OUT).
``--scaling`` also times the fit alone on ``distributed.LocalCluster(n_workers=1)`` and ``(n_workers=2)``.
Results go to stdout (and ``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np


def make_store(path, cov_path, n, V, sites, seed=0):
    import dask
    import dask.array as da
    import pandas as pd

    from featharm.io.store import default_chunks, write_store

    rng = np.random.default_rng(seed)
    w = rng.uniform(0.2, 3.0, sites)
    codes = rng.choice(sites, n, p=w / w.sum())
    age = rng.uniform(20, 85, n)
    sex = rng.integers(0, 2, n)
    ids = [f"sub-{k:06d}" for k in range(n)]
    pd.DataFrame({"id": ids, "site": [f"s{c:02d}" for c in codes], "age": age, "sex": np.where(sex, "M", "F")}
                 ).to_csv(cov_path, index=False)
    rows, cols = default_chunks((n, V), 4)

    def block(r0, r1, c0, c1):
        g = np.random.default_rng([seed, r0, c0])
        v = np.arange(c0, c1)
        mu = 2.5 + 0.3 * np.sin(v / 997.0)
        site_g = np.sin(np.outer(np.arange(sites) + 1, v / 1543.0)) * 0.1
        site_d = 1.0 + 0.2 * np.cos(np.outer(np.arange(sites) + 1, v / 2311.0))
        c = codes[r0:r1]
        y = (mu - 0.004 * (age[r0:r1, None] - 50) + 0.05 * sex[r0:r1, None] + site_g[c]
             + 0.12 * site_d[c] * g.standard_normal((r1 - r0, c1 - c0)))
        return y.astype(np.float32)

    blocks = [[da.from_delayed(dask.delayed(block)(r, min(n, r + rows), c, min(V, c + cols)),
                               shape=(min(n, r + rows) - r, min(V, c + cols) - c), dtype=np.float32)
               for c in range(0, V, cols)] for r in range(0, n, rows)]
    data = da.block(blocks)
    write_store(path, data, ids=ids, features=[f"v{k}" for k in range(V)], chunks=(rows, cols))


def exactness(n=2000, p=20000, sites=12, seed=1) -> dict:
    """The Dask path against the in-memory fit on volume-like float64 features (mean 5e3-2e4, SD 50-200): the
    largest relative error of every stored array (feature by feature) and of the output (in units of each
    feature's sigma); and the float32 store path against the in-memory fit on the same float32 table, in units in
    the last place of float32."""
    import tempfile
    import warnings

    import dask.array as da
    import pandas as pd

    import featharm
    from featharm.io import read_store, write_store

    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 2.0, sites)
    codes = rng.choice(sites, n, p=w / w.sum())
    age, sex = rng.uniform(20, 85, n), rng.choice(["F", "M"], n)
    mu, sd = rng.uniform(5e3, 2e4, p), rng.uniform(50, 200, p)
    gam = rng.normal(0, 0.5, (sites, p))
    dl = np.exp(rng.normal(0, 0.2, (sites, p)))
    Y = (mu + np.outer(age - 50, -0.004 * mu) + np.outer(sex == "M", 0.3 * sd)
         + sd * (gam[codes] + dl[codes] * rng.standard_normal((n, p))))
    ids = pd.Index([f"s{k}" for k in range(n)])
    X = pd.DataFrame(Y, index=ids, columns=[f"f{j}" for j in range(p)])
    cov = pd.DataFrame({"site": codes, "age": age, "sex": sex}, index=ids)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = featharm.ComBat(batch="site", formula="age + sex").fit(X, cov)
        Ym = mem.transform(X, cov).to_numpy()
        dk = featharm.ComBat(batch="site", formula="age + sex").fit(da.from_array(Y, chunks=(256, 4096)), cov)
        Yd = dk.transform(da.from_array(Y, chunks=(256, 4096)), cov).compute()
        err = 0.0
        for k, b in mem._arr.items():
            a = dk._arr[k]
            if b.dtype.kind != "f":
                assert np.array_equal(a, b), k
                continue
            scale = np.abs(b).max(axis=tuple(range(b.ndim - 1))) if b.ndim and b.shape[-1] == p else np.abs(b).max()
            err = max(err, float(np.nanmax(np.abs(a - b) / np.where(scale > 0, scale, 1.0))))
        out["params_rel"] = err
        out["output_sigma_units"] = float(np.abs(Yd - Ym).max(axis=0).__truediv__(mem._arr["sigma"]).max())
        X32 = X.astype(np.float32)
        m32 = featharm.ComBat(batch="site", formula="age + sex").fit(X32, cov)
        Y32 = m32.transform(X32, cov).to_numpy()
        with tempfile.TemporaryDirectory() as d:
            write_store(os.path.join(d, "s.zarr"), X32, chunks=(256, 4096))
            st = read_store(os.path.join(d, "s.zarr"))
            s32 = featharm.ComBat(batch="site", formula="age + sex").fit(st, cov)
            got = s32.transform(st, cov).data.compute()
        out["float32_max_ulps"] = float((np.abs(got - Y32) / np.spacing(np.abs(Y32))).max())
    return out


def child(args) -> None:
    """Run one measured step in this (fresh) process and print its time and peak RSS as JSON."""
    t0 = time.perf_counter()
    if args.child == "copy":
        import dask.array as da

        src = da.from_zarr(os.path.join(args.store, "data"))
        da.to_zarr(src, args.out, overwrite=True)
    elif args.child == "harmonize":
        from featharm.cli import main

        rc = main(["harmonize", args.store, "--covariates", args.cov, "--id", "id", "--batch", "site", "--formula",
                   "age + sex", "--out", args.out, "--quiet"])
        assert rc == 0
    elif args.child.startswith("fit-workers-"):
        import warnings

        import distributed
        import pandas as pd

        import featharm
        from featharm.io import read_store

        k = int(args.child.rsplit("-", 1)[1])
        cov = pd.read_csv(args.cov, index_col="id")
        store = read_store(args.store)
        with distributed.LocalCluster(n_workers=k, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                distributed.Client(cl) as client:
            featharm.set_scheduler(client)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                featharm.ComBat(batch="site", formula="age + sex").fit(store, cov)
            featharm.set_scheduler(None)
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run(step, args, out=None):
    cmd = [sys.executable, __file__, "--child", step, "--store", args.store, "--cov", args.cov]
    if out:
        cmd += ["--out", out]
    load = os.getloadavg()[0]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["load_before"] = load
    r["load_after"] = os.getloadavg()[0]
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, default=10000)
    p.add_argument("--vertices", type=int, default=327684)
    p.add_argument("--sites", type=int, default=30)
    p.add_argument("--dir", default="/tmp/featharm-bench-scale")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--scaling", action="store_true", help="also time the fit on LocalCluster(1) and (2)")
    p.add_argument("--exactness", action="store_true", help="only the exactness check (2,000 × 20,000 float64)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--cov", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.exactness:
        t = time.perf_counter()
        print(json.dumps(exactness()), f"({time.perf_counter() - t:.0f} s)")
        return None
    os.makedirs(args.dir, exist_ok=True)
    args.store = os.path.join(args.dir, "in.zarr")
    args.cov = os.path.join(args.dir, "cov.csv")
    nbytes = args.subjects * args.vertices * 4
    t = time.perf_counter()
    if not os.path.exists(args.store):
        make_store(args.store, args.cov, args.subjects, args.vertices, args.sites)
    print(f"store: {args.subjects} × {args.vertices} float32 = {nbytes / 2**30:.2f} GiB in memory, "
          f"{shutil.disk_usage(args.dir).used and sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.store) for f in fs) / 2**30:.2f} GiB on disk "
          f"(made in {time.perf_counter() - t:.0f} s)")
    results = {"subjects": args.subjects, "vertices": args.vertices, "sites": args.sites, "bytes": nbytes}
    for step, out in (("copy", os.path.join(args.dir, "copy.zarr")), ("harmonize", os.path.join(args.dir, "out.zarr"))):
        shutil.rmtree(out, ignore_errors=True)
        r = run(step, args, out)
        r["MB_per_s"] = nbytes / 2**20 / r["seconds"]
        results[step] = r
        print(f"{step:10s} {r['seconds']:8.1f} s  {r['MB_per_s']:7.0f} MB/s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
              f"load {r['load_before']:.1f}-{r['load_after']:.1f}")
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    results["ratio"] = results["harmonize"]["seconds"] / results["copy"]["seconds"]
    print(f"harmonize / copy = {results['ratio']:.2f}")
    if args.scaling:
        for k in (1, 2):
            r = run(f"fit-workers-{k}", args)
            results[f"fit_workers_{k}"] = r
            print(f"fit on LocalCluster(n_workers={k}): {r['seconds']:.1f} s (load {r['load_before']:.1f})")
        results["speedup"] = results["fit_workers_1"]["seconds"] / results["fit_workers_2"]["seconds"]
        print(f"speed-up 2 workers / 1: {results['speedup']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
