#!/usr/bin/env python
"""Time featharm's default BLAS threads against one and two threads, idle and beside a busy process.

Cases (the data generators of the other benchmarks, so the cases are theirs):

* ``combat``: ComBat ``fit_transform``, n = 10,000, p = 2,000, 30 sites (``bench_combat.make_data``; the
  size of issue 19's measurement);
* ``gam``: ComBatGAM ``fit_transform``, smooth age, n = 10,000, p = 2,000 (``bench_gam.make_data``, its
  large case);
* ``covbat``: CovBat ``fit_transform``, n = 5,000, p = 400 (``bench_families.make_data``, its large case);
* ``longcombat``: LongComBat ``fit_transform``, 1,000 subjects (about 4,000 scans), 100 features
  (``featharm.datasets.make_longitudinal``, as ``bench_longitudinal.py``).

Each case runs with ``n_jobs=None`` (featharm's choice, the default), ``n_jobs=1`` and ``n_jobs=2``,
first on the machine as it is ("idle": no process of this script competes) and then with one competing
CPU-bound process (``python -c 'while True: pass'``, started by this script and stopped at the end of the
phase). Within a phase the three settings run round robin (the order turning each round, a 0.3 s pause
before each run), ``--repeat`` times each, after one warm-up run (three times as many runs for a case whose warm-up took under 3 s); the median and the minimum are
reported, with the ratio default / best of (1 thread, 2 threads) for each and the threads the default chose
(each call's choice, recorded). Where the default chose one thread it runs what ``n_jobs=1`` runs, so
their difference is the noise of the machine. The 1-minute load average (``/proc/loadavg``) is printed
with each figure: the machine is shared, so other users' processes count too.

Run it under the shared benchmark lock::

    flock /tmp/featharm-bench.lock python benchmarks/bench_threads.py --repeat 7
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

# the featharm of this checkout, not another installed copy (``python benchmarks/x.py`` puts benchmarks/ first)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import featharm as fh  # noqa: E402
from featharm import _threads  # noqa: E402

SETTINGS = {"default": None, "1 thread": 1, "2 threads": 2}
PAUSE = 0.3  # seconds before each timed run


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def make_cases(which):
    import bench_combat
    import bench_families
    import bench_gam

    cases = {}
    if "combat" in which:
        Y, cov = bench_combat.make_data(10_000, 2_000)
        X = pd.DataFrame(Y, index=cov.index, columns=[f"f{j}" for j in range(Y.shape[1])], copy=False)
        cases["combat"] = (lambda n_jobs: fh.ComBat(batch="site", formula="age + sex", n_jobs=n_jobs), X, cov,
                           "ComBat, n = 10,000, p = 2,000")
    if "gam" in which:
        X, cov = bench_gam.make_data(10_000, 2_000)
        cases["gam"] = (lambda n_jobs: fh.ComBatGAM(batch="site", formula="sex", smooth="age", n_jobs=n_jobs),
                        X, cov, "ComBatGAM, n = 10,000, p = 2,000")
    if "covbat" in which:
        X, cov = bench_families.make_data(5_000, 400)
        cases["covbat"] = (lambda n_jobs: fh.CovBat(batch="site", formula="age + sex", n_jobs=n_jobs), X, cov,
                           "CovBat, n = 5,000, p = 400")
    if "longcombat" in which:
        sim = fh.datasets.make_longitudinal(n_subjects=1000, n_features=100, random_state=0)
        cases["longcombat"] = (lambda n_jobs: fh.LongComBat(batch="site", subject="subject", time="time",
                                                            formula="age + sex + time", n_jobs=n_jobs),
                               sim.X, sim.covariates, f"LongComBat, {len(sim.X)} scans, 100 features")
    return cases


def run_phase(cases, repeat: int, phase: str) -> list[dict]:
    rows = []
    original = _threads.choose_blas_threads
    for name, (model, X, cov, label) in cases.items():
        times = {s: [] for s in SETTINGS}
        chosen = []

        def recording(*args, **kwargs):
            k = original(*args, **kwargs)
            chosen.append(k)
            return k

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            for setting, n_jobs in SETTINGS.items():  # warm-up
                model(n_jobs).fit_transform(X, cov)
            runs = repeat if time.perf_counter() - t0 > 3.0 else 3 * repeat  # more runs of the quick cases
            loads = [load1()]
            order = list(SETTINGS.items())
            for r in range(runs):
                # the order turns each round, and a pause precedes each run: OpenBLAS's threads keep spinning
                # for a while after a multi-threaded call, which would slow whatever runs next
                for setting, n_jobs in order[r % 3:] + order[:r % 3]:
                    time.sleep(PAUSE)
                    est = model(n_jobs)
                    if n_jobs is None:
                        _threads.choose_blas_threads = recording
                    try:
                        t0 = time.perf_counter()
                        est.fit_transform(X, cov)
                        times[setting].append(time.perf_counter() - t0)
                    finally:
                        _threads.choose_blas_threads = original
                loads.append(load1())
        med = {s: statistics.median(t) for s, t in times.items()}
        low = {s: min(t) for s, t in times.items()}
        row = {"phase": phase, "case": name, "label": label, **{f"{s} median (s)": med[s] for s in SETTINGS},
               **{f"{s} min (s)": low[s] for s in SETTINGS},
               "default / best (median)": med["default"] / min(med["1 thread"], med["2 threads"]),
               "default / best (min)": low["default"] / min(low["1 thread"], low["2 threads"]),
               "default chose": sorted(set(chosen)), "load1 min-max": [min(loads), max(loads)], "runs": runs}
        rows.append(row)
        print(f"  {phase:5s} {label:38s} median (min) default {med['default']:.3f} ({low['default']:.3f}) s | "
              f"1 thread {med['1 thread']:.3f} ({low['1 thread']:.3f}) s | 2 threads {med['2 threads']:.3f} "
              f"({low['2 threads']:.3f}) s | default/best {row['default / best (median)']:.2f} "
              f"({row['default / best (min)']:.2f}) | default chose {row['default chose']} | {runs} runs | "
              f"load1 {min(loads):.2f}-{max(loads):.2f}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="combat,gam,covbat,longcombat")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each setting per phase (median reported)")
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args(argv)
    which = args.cases.split(",")
    cases = make_cases(which)
    print(f"{_threads.usable_cpus()} usable CPUs; BLAS {[(i['internal_api'], i['num_threads']) for i in _threads._get_controller().info()]}; "
          f"numpy {np.__version__}; load1 {load1():.2f}", flush=True)
    rows = run_phase(cases, args.repeat, "idle")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that the finally below stops the spinner
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        rows += run_phase(cases, args.repeat, "busy")
    finally:
        spinner.kill()  # the process this script started, by its id
        spinner.wait()
    worst = max(r["default / best (median)"] for r in rows)
    worst_min = max(r["default / best (min)"] for r in rows)
    print(f"worst default / best: {worst:.2f} of the medians, {worst_min:.2f} of the minima (target <= 1.10)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
