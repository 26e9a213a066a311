#!/usr/bin/env python
"""Time ``featharm.io.collect_subjects`` on a synthetic SUBJECTS_DIR of 1,000 subjects.

Each subject has ``aseg.stats``, ``lh.aparc.stats`` and ``rh.aparc.stats`` in the FreeSurfer 7.4 layout
(written by ``featharm.datasets._freesurfer_synth``; writing is not timed). Timed, side by side in this process,
median of ``--repeat`` runs (the files are in the OS page cache after the first run, as after any recent recon-all):

* featharm: ``collect_subjects(sd, ["aseg", "aparc"])`` -> 1,000 x (aseg volumes + globals, lh/rh thickness,
  area, volume, mean thickness, white area);
* pandas baseline (what a hand-written script does): per file, find ``# ColHeaders``, ``pd.read_csv(...,
  comment="#", sep=r"\\s+")``, then one wide row per subject and ``pd.concat``; aseg ``# Measure`` globals are
  not parsed by it (less work than featharm does).

The peer package ``freesurfer-stats`` 1.2.1 (PyPI) could not be timed: it fails on pandas >= 3 (it calls
``pd.to_numeric(errors="ignore")``, removed in pandas 3).

Both outputs are compared cell by cell on their common columns: featharm reads the decimal text with
correct rounding; pandas' default C parser is not guaranteed to (``float_precision="high"``), the script
counts the cells where they differ.

Usage::

    python benchmarks/bench_collect.py                 # 1,000 subjects, 3 repeats
    python benchmarks/bench_collect.py --n 200 --repeat 5 --workdir /tmp/sd
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featharm.datasets._freesurfer_synth import write_subject  # noqa: E402
from featharm.io import collect_subjects  # noqa: E402

FILES = ["aseg.stats", "lh.aparc.stats", "rh.aparc.stats"]


def make_tree(root: Path, n: int) -> None:
    for i in range(n):
        write_subject(root / f"sub-{i:04d}", "7.4", seed=i, files=FILES)


def pandas_baseline(root: Path) -> pd.DataFrame:
    rows, ids = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        parts = []
        for fname in FILES:
            path = d / "stats" / fname
            with open(path) as fh:
                cols = next(line for line in fh if line.startswith("# ColHeaders")).split()[2:]
            t = pd.read_csv(path, comment="#", sep=r"\s+", header=None, names=cols)
            t = t.set_index("StructName")
            if fname == "aseg.stats":
                parts.append(t["Volume_mm3"])
            else:
                h = fname[:2]
                for meas, col in (("thickness", "ThickAvg"), ("area", "SurfArea"), ("volume", "GrayVol")):
                    s = t[col].astype(float)
                    s.index = [f"{h}_{k}_{meas}" for k in s.index]
                    parts.append(s)
        rows.append(pd.concat(parts))
        ids.append(d.name)
    return pd.DataFrame(rows, index=pd.Index(ids, name="fsid"))


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="subjects (default 1000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", help="where to write the SUBJECTS_DIR (default: a temporary folder)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp) / "subjects"
        if not (root.exists() and len(list(root.iterdir())) == args.n):
            t0 = time.perf_counter()
            make_tree(root, args.n)
            print(f"wrote {args.n} subjects x {len(FILES)} stats files in {time.perf_counter() - t0:.1f} s")
        nbytes = sum(f.stat().st_size for f in root.glob("*/stats/*.stats"))
        print(f"input: {args.n * len(FILES)} files, {nbytes / 1e6:.1f} MB; cores: {os.cpu_count()}; "
              f"load average: {os.getloadavg()[0]:.1f}")

        t_fh, all_fh, df = timed(lambda: collect_subjects(root, ["aseg", "aparc"]), args.repeat)
        t_pd, all_pd, base = timed(lambda: pandas_baseline(root), args.repeat)

        common = [c for c in base.columns if c in df.columns]
        a = df.loc[base.index, common].to_numpy(dtype=float)
        b = base[common].to_numpy(dtype=float)
        ndiff = int((a != b).sum())
        maxrel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-300))) if ndiff else 0.0

        print(f"\n{'implementation':<22}{'median s':>10}{'runs s':>28}{'shape':>16}")
        print(f"{'featharm collect':<22}{t_fh:>10.2f}{', '.join(f'{t:.2f}' for t in all_fh):>28}{str(df.shape):>16}")
        print(f"{'pandas per-file':<22}{t_pd:>10.2f}{', '.join(f'{t:.2f}' for t in all_pd):>28}{str(base.shape):>16}")
        print(f"\nspeed-up featharm vs pandas baseline: {t_pd / t_fh:.1f}x "
              f"({t_fh / args.n * 1e3:.2f} ms per subject)")
        print(f"common cells compared: {a.size}; cells differing: {ndiff} (max relative difference {maxrel:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
