#!/usr/bin/env python
"""Time the command line end to end on a 20,000 x 2,000 CSV, side by side with a plain pandas round trip.

The table (written once into ``--workdir``, not timed): ``subject_id`` with leading zeros, ``site`` (10 sites),
``age``, ``sex`` and 2,000 features from ``featharm.datasets.make_multisite``, half of them scaled by 1,000
(thickness- and volume-like), all printed with ``%.4f`` by pandas (340 MB). Each case runs in a fresh
interpreter, one after the other in this run; wall time is measured around the process, CPU time and peak
resident memory (``ru_maxrss``) are the process's own (``os.wait4``), so imports count as they do for a user:

* pandas round trip: ``pd.read_csv(DATA)`` then ``df.to_csv(OUT, index=False)`` (the baseline of the target:
  ``featharm harmonize`` in at most half its time, peak memory at most 3x the float64 data);
* pandas read: ``pd.read_csv(DATA)`` alone (the baseline of ``diagnose``, which writes no big table);
* ``featharm harmonize DATA --batch site --formula "age + sex" --id subject_id --out OUT --save-model M``
  (default ``--float-format shortest``), and again with ``--float-format input`` and ``%.4f``;
* ``featharm apply M DATA --id subject_id --out OUT2`` (checked to write OUT byte for byte);
* ``featharm diagnose DATA ... --no-classification --n-permutations 0`` (the per-feature and multivariate
  tables without the site classification and the permutations, whose cost is the diagnostics' own).

Run it while holding the machine-wide benchmark lock, and note the load::

    flock /tmp/featharm-bench.lock python benchmarks/bench_cli.py
    python benchmarks/bench_cli.py --n 2000 --p 200          # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def make_table(path: Path, n: int, p: int) -> None:
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    import featharm as fh

    s = fh.datasets.make_multisite(n_subjects=n, n_sites=10, n_features=p, random_state=0)
    X = s.X.reset_index(drop=True)
    X.iloc[:, 1::2] *= 1000
    df = pd.concat([s.covariates.reset_index(drop=True), X], axis=1)
    df.insert(0, "subject_id", [f"{i:06d}" for i in range(n)])
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False, float_format="%.4f")
    tmp.rename(path)


def run(argv: list, label: str) -> dict:
    """Run ``argv`` in a fresh process: wall time, CPU time and peak RSS of that process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{err}{out}")
    return {"case": label, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "peak_gb": usage.ru_maxrss * 1024 / 1e9, "load": f"{before} -> {loadavg()}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--p", type=int, default=2_000)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "featharm-bench-cli"))
    ap.add_argument("--no-diagnose", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of every case, round robin (the table shows each case's median wall and CPU time)")
    ap.add_argument("--make-table", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_table:  # in a child process, so that this one stays small (see below)
        make_table(Path(args.make_table), args.n, args.p)
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"data_{args.n}x{args.p}.csv"
    if not data.exists():
        print(f"writing {data} ...", flush=True)
        # a child writes it: a fork's pre-exec pages count in the children's ru_maxrss, so the parent
        # must never hold the table (else every case reports the parent's peak)
        subprocess.run([sys.executable, __file__, "--make-table", str(data), "--n", str(args.n),
                        "--p", str(args.p)], check=True)
    float64_gb = args.n * args.p * 8 / 1e9
    print(f"DATA {data}: {data.stat().st_size / 1e6:.0f} MB, {args.n} x {args.p} features "
          f"(float64 {float64_gb:.2f} GB); load {loadavg()}", flush=True)
    py = sys.executable
    cli = [py, "-m", "featharm.cli"]
    out, model = work / "h.csv", work / "m.fhm"
    common = ["--batch", "site", "--formula", "age + sex", "--id", "subject_id", "--quiet"]
    cases = [
        ([py, "-c", f"import pandas as pd; pd.read_csv({str(data)!r}).to_csv({str(work / 'rt.csv')!r}, "
                    "index=False)"], "pandas read_csv + to_csv"),
        ([py, "-c", f"import pandas as pd; pd.read_csv({str(data)!r})"], "pandas read_csv"),
        ([*cli, "harmonize", str(data), *common, "--out", str(out), "--save-model", str(model)],
         "featharm harmonize"),
        ([*cli, "harmonize", str(data), *common, "--out", str(work / "h_input.csv"), "--float-format", "input"],
         "featharm harmonize --float-format input"),
        ([*cli, "harmonize", str(data), *common, "--out", str(work / "h_4f.csv"), "--float-format", "%.4f"],
         "featharm harmonize --float-format %.4f"),
        ([*cli, "apply", str(model), str(data), "--id", "subject_id", "--quiet", "--out", str(work / "a.csv")],
         "featharm apply"),
    ]
    if not args.no_diagnose:
        cases.append(([*cli, "diagnose", str(data), "--batch", "site", "--formula", "age + sex", "--id",
                       "subject_id", "--no-classification", "--n-permutations", "0", "--quiet", "--out",
                       str(work / "diag")], "featharm diagnose --no-classification --n-permutations 0"))
    runs = {label: [] for _, label in cases}
    for k in range(args.repeat):
        for argv, label in cases:
            r = run(argv, label)
            runs[label].append(r)
            print(f"  [{k + 1}/{args.repeat}] {label}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s CPU, peak "
                  f"{r['peak_gb']:.2f} GB (load {r['load']})", flush=True)
    results = []
    for label, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["wall"])
        med = rs[(len(rs) - 1) // 2]
        results.append({**med, "cpu": sorted(r["cpu"] for r in rs)[(len(rs) - 1) // 2],
                        "peak_gb": max(r["peak_gb"] for r in rs),
                        "load": f"{rs[0]['load'].split(' -> ')[0]} .. {rs[-1]['load'].split(' -> ')[1]}"})
    base, read = results[0]["wall"], results[1]["wall"]
    print(f"\n| case | wall (s), median of {args.repeat} | CPU (s) | peak RSS (GB) | peak / float64 data | wall / pandas round trip | "
          f"load (1, 5, 15 min) before -> after |\n|---|---|---|---|---|---|---|")
    for r in results:
        ref = read if r["case"].startswith("featharm diagnose") else base
        refname = "read" if ref is read else "round trip"
        print(f"| {r['case']} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['peak_gb']:.2f} | "
              f"{r['peak_gb'] / float64_gb:.2f} | {r['wall'] / ref:.2f} (vs pandas {refname}) | {r['load']} |")
    same = (work / "a.csv").read_bytes() == out.read_bytes()
    sizes = {p.name: p.stat().st_size / 1e6 for p in (work / "rt.csv", out, work / "h_input.csv", work / "h_4f.csv")}
    print(f"\napply OUT == harmonize OUT byte for byte: {same}; sizes (MB): "
          + ", ".join(f"{k} {v:.0f}" for k, v in sizes.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "apply_equals_harmonize": same,
                                               "sizes_mb": sizes}, indent=1))


if __name__ == "__main__":
    main()
