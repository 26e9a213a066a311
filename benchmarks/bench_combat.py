#!/usr/bin/env python
"""Time featharm's ComBat against neuroHarmonize (linear) and neuroCombat on the peer protocol's data.

Cases (30 sites with unbalanced Dirichlet sizes, covariates age + sex, site location and scale effects):

* ``small``: n = 1,000 subjects, p = 150 features
* ``large``: n = 10,000 subjects, p = 20,000 features (the input is n * p * 8 B = 1.6 GB)

All implementations run side by side in this one process (``--isolate`` runs each (implementation,
case) in its own child process instead, this script re-invoked with ``--child``); each builds the data
deterministically, then measures each call:

* wall time: ``time.perf_counter`` around the call only (data creation and imports excluded);
* peak memory: the process's resident-set high-water mark during the call minus the resident set just
  before it. The high-water mark is reset before every call by writing ``5`` to ``/proc/self/clear_refs``
  and read from ``VmHWM`` in ``/proc/self/status`` (Linux). This counts everything the call touches
  (numpy arrays, pandas copies, BLAS buffers, the returned output), and is reported in GB and as a
  multiple of the input size n * p * 8 bytes. Without ``clear_refs`` the script falls back to
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (lifetime high-water mark; flagged in the output).

featharm is timed as ``fit_transform``, and as ``fit`` and ``transform`` separately, ``--repeat`` times
each (median reported). The peers are timed once on the large case (``--peer-repeat-large``) and
``--repeat`` times on the small one. Each child saves its harmonized output to ``--workdir``; the parent
then prints the max abs difference between implementations (same data, float32-representable covariates,
so they should agree to ~1e-12).

Usage::

    python benchmarks/bench_combat.py                              # both cases, all implementations
    python benchmarks/bench_combat.py --cases small --repeat 5
    python benchmarks/bench_combat.py --skip neuroCombat --out results.json
    python benchmarks/bench_combat.py --cases large --skip neuroCombat,neuroHarmonize   # featharm only

The peers are optional: ``pip install neuroCombat`` and ``pip install --no-deps neuroHarmonize``.
neuroHarmonize imports ``nibabel`` at module level (only its NIfTI helpers use it); when nibabel is absent
(``--no-deps``), the child registers an empty stand-in module so that ``harmonizationLearn`` can be imported.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

CASES = {
    "small": dict(n=1_000, p=150, sites=30),
    "large": dict(n=10_000, p=20_000, sites=30),
}
IMPLS = ("featharm", "neuroHarmonize", "neuroCombat")
TARGET_SECONDS = 3.0
TARGET_MEMORY = 2.0  # peak increase as a multiple of the input (n * p * 8 bytes)


# ---------------------------------------------------------------------------------------------- data
def make_data(n: int, p: int, sites: int = 30, seed: int = 0):
    """Deterministic samples x features data with site location/scale effects and age/sex effects.

    Returns ``(Y, cov)``: ``Y`` is an n x p float64 array in Fortran order (the layout pandas gives a
    table read from a file, and whose transpose is the features x samples C array neuroCombat wants);
    ``cov`` a DataFrame with ``site`` (strings ``site00`` ... sorted like the codes), ``age`` (multiples
    of 0.5, exactly representable in float32, so neuroCombat's float32 cast of the design is exact) and
    ``sex`` ("F"/"M").
    """
    import pandas as pd

    rng = np.random.default_rng([seed, n, p, sites])
    # unbalanced sizes: a floor of a few subjects plus a multinomial draw from Dirichlet(0.7) proportions
    floor = max(5, n // 500)
    probs = rng.dirichlet(np.full(sites, 0.7))
    sizes = floor + rng.multinomial(n - floor * sites, probs)
    codes = np.repeat(np.arange(sites), sizes)
    rng.shuffle(codes)
    age = rng.integers(2 * 18, 2 * 90 + 1, size=n) / 2.0
    male = rng.integers(0, 2, size=n)

    mu = rng.uniform(1.0, 10.0, p)  # feature means (thickness/area-like magnitudes)
    sd = rng.uniform(0.1, 0.5, p)  # residual SD
    b_age = rng.normal(0.0, 0.01, p)  # per year
    b_sex = rng.normal(0.0, 0.2, p)
    gamma = rng.normal(0.0, 0.5, (sites, p)) * rng.uniform(0.2, 1.0, (sites, 1))  # location, in SD units
    delta = np.exp(rng.normal(0.0, 0.25, (sites, p)) + rng.normal(0.0, 0.2, (sites, 1)))  # scale factor

    Yt = np.empty((p, n))  # features x samples, C order  ->  Y = Yt.T is n x p, Fortran order
    step = max(1, (32 * 2**20) // (8 * n))
    age_c = age - 50.0
    for a in range(0, p, step):
        b = min(p, a + step)
        blk = Yt[a:b]
        rng.standard_normal(out=blk)
        blk *= sd[a:b, None] * delta[:, a:b].T[:, codes]
        blk += (mu[a:b, None] + b_age[a:b, None] * age_c[None, :] + b_sex[a:b, None] * male[None, :]
                + (gamma[:, a:b] * sd[a:b]).T[:, codes])
    labels = np.array([f"site{i:02d}" for i in range(sites)], dtype=object)
    cov = pd.DataFrame({"site": labels[codes], "age": age, "sex": np.where(male == 1, "M", "F")},
                       index=pd.Index([f"sub{j:05d}" for j in range(n)], name="subject"))
    return Yt.T, cov


# ---------------------------------------------------------------------------------------------- memory
def _status_mb() -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val, _unit = line.split()
                out[key[:-1]] = int(val) / 1024.0
    return out


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def prefault(nbytes: int) -> float:
    """Touch ``nbytes`` of fresh memory and free it again; returns the seconds it took.

    On this benchmark's VM, memory a process frees is handed back to the hypervisor within 1-2 s
    (virtio-balloon free-page reporting), and touching it again costs up to ~2 s per GB, against ~0.08 s
    per GB for an ordinary page fault. Touching a scratch buffer right before a timed call makes the call's
    own allocations ordinary page faults (zeroed by the guest kernel, as on bare metal). ``--prefault 0``
    turns this off and measures the VM as it is.
    """
    if nbytes <= 0:
        return 0.0
    t0 = time.perf_counter()
    buf = np.empty(nbytes // 8)
    buf[::512] = 0.0  # one write per 4 KiB page
    del buf
    return time.perf_counter() - t0


class Meter:
    """Wall time and resident-memory increase of one call."""

    def __init__(self, prefault_bytes: int = 0):
        self.method = None
        self.prefault_bytes = prefault_bytes

    def run(self, fn):
        gc.collect()
        self.prefault_seconds = prefault(self.prefault_bytes)
        try:
            rss0 = _status_mb()["VmRSS"]
            can_reset = _reset_hwm()
        except OSError:  # not Linux
            rss0, can_reset = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, False
        self.method = "VmHWM-after-clear_refs" if can_reset else "ru_maxrss-lifetime"
        c0 = os.times()
        t0 = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - t0
        c1 = os.times()
        self.cpu = (c1.user - c0.user) + (c1.system - c0.system)
        self.sys = c1.system - c0.system
        if can_reset:
            hwm = _status_mb()["VmHWM"]
        else:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return result, wall, max(0.0, hwm - rss0) * 2**20, rss0 * 2**20, hwm * 2**20


# ---------------------------------------------------------------------------------------------- children
def _import_neuroharmonize():
    try:
        from neuroHarmonize import harmonizationLearn
        return harmonizationLearn, None
    except ModuleNotFoundError as exc:
        if exc.name != "nibabel":
            raise
    import types

    sys.modules["nibabel"] = types.ModuleType("nibabel")  # only harmonizationNIFTI uses it
    from neuroHarmonize import harmonizationLearn
    return harmonizationLearn, "nibabel not installed: an empty stand-in module was registered"


def child(impl: str, case: str, repeat: int, workdir: Path, seed: int, save: bool,
          prefault_x: float) -> dict:
    import pandas as pd

    spec = CASES[case]
    n, p = spec["n"], spec["p"]
    t0 = time.perf_counter()
    Y, cov = make_data(n, p, spec["sites"], seed)
    t_data = time.perf_counter() - t0
    meter = Meter(int(prefault_x * n * p * 8))
    notes = []
    runs: dict[str, list] = {}

    def record(mode, fn):
        load1 = os.getloadavg()[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res, wall, peak, rss0, hwm = meter.run(fn)
        for w in caught:
            msg = f"warning: {w.category.__name__}: {str(w.message)[:160]}"
            if msg not in notes:
                notes.append(msg)
        runs.setdefault(mode, []).append(dict(wall=wall, peak_bytes=peak, rss_before=rss0, hwm=hwm,
                                              load1_before=load1,
                                              cpu=meter.cpu, sys=meter.sys, prefault_s=meter.prefault_seconds))
        return res

    out_path = workdir / f"{impl}_{case}.npy"
    # a tiny, separate data set for one untimed warm-up call (lazy imports, first-call caches)
    Yw, covw = make_data(300, 40, 5, seed + 1)

    def timed(mode, make_call, k):
        """Warm up once on the tiny data, then time ``k`` calls on the real data; return the last output."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_call(Yw, covw)()
        res = None
        for _ in range(k):
            res = None  # free the previous output before measuring the next call
            res = record(mode, make_call(Y, cov))
        return res

    if impl == "featharm":
        import featharm

        version = featharm.__version__

        def frame(Y_, cov_):  # the DataFrame is a view of the array (no copy), as read_csv would give
            X_ = pd.DataFrame(Y_, index=cov_.index, columns=[f"roi{j:05d}" for j in range(Y_.shape[1])],
                              copy=False)
            assert np.shares_memory(X_.to_numpy(copy=False), Y_)
            return X_

        def new():
            return featharm.ComBat(batch="site", formula="age + sex")

        X = frame(Y, cov)
        Xw = frame(Yw, covw)
        fr = {id(Y): X, id(Yw): Xw}
        out = timed("fit_transform", lambda Y_, cov_: (lambda: new().fit_transform(fr[id(Y_)], cov_)), repeat)
        if save:
            np.save(out_path, out.to_numpy(copy=False))
        del out
        hm = timed("fit", lambda Y_, cov_: (lambda: new().fit(fr[id(Y_)], cov_)), repeat)
        hmw = new().fit(Xw, covw)
        out2 = timed("transform", lambda Y_, cov_: (lambda: (hm if Y_ is Y else hmw).transform(fr[id(Y_)], cov_)),
                     repeat)
        if save:
            ref = np.load(out_path, mmap_mode="r")
            notes.append(f"max |fit().transform() - fit_transform()| = {_maxdiff(out2.to_numpy(), ref):.3g}")
        del out2, hm
    elif impl == "neuroHarmonize":
        harmonizationLearn, note = _import_neuroharmonize()
        if note:
            notes.append(note)
        version = _dist_version("neuroHarmonize")

        def call(Y_, cov_):  # linear ComBat: numeric covariates, literal SITE column, samples x features
            covars = pd.DataFrame({"SITE": cov_["site"].to_numpy(), "age": cov_["age"].to_numpy(),
                                   "sex": (cov_["sex"] == "M").astype(np.int64).to_numpy()})

            def run():
                with contextlib.redirect_stdout(io.StringIO()):
                    return harmonizationLearn(Y_, covars)[1]
            return run

        out = timed("fit_transform", call, repeat)
        if save:
            np.save(out_path, out)
        del out
    elif impl == "neuroCombat":
        from neuroCombat import neuroCombat

        version = _dist_version("neuroCombat")

        def call(Y_, cov_):  # features x samples: Y_.T is a C-ordered view, no copy
            covars = cov_.reset_index(drop=True)

            def run():
                with contextlib.redirect_stdout(io.StringIO()):
                    return neuroCombat(dat=Y_.T, covars=covars, batch_col="site", categorical_cols=["sex"],
                                       continuous_cols=["age"])["data"]
            return run

        out = timed("fit_transform", call, repeat)
        if save:
            np.save(out_path, out.T)
        del out
    else:  # pragma: no cover
        raise ValueError(impl)

    sizes = cov["site"].value_counts()
    return dict(impl=impl, case=case, version=version, n=n, p=p, sites=spec["sites"],
                site_size_min=int(sizes.min()), site_size_max=int(sizes.max()),
                input_bytes=n * p * 8, data_seconds=t_data, prefault_x=prefault_x, memory_method=meter.method, notes=notes,
                runs=runs, output=str(out_path) if save else None)


def _dist_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # pragma: no cover
        return None


def _maxdiff(a, b, block=1000) -> float:
    """Max |a - b| over two n x p arrays (or memory maps), a few columns at a time."""
    m = 0.0
    for s in range(0, a.shape[1], block):
        d = np.abs(np.asarray(a[:, s:s + block]) - np.asarray(b[:, s:s + block]))
        m = max(m, float(d.max()))
    return m


def _maxabs(a, block=1000) -> float:
    return max(float(np.abs(np.asarray(a[:, s:s + block])).max()) for s in range(0, a.shape[1], block))


# ---------------------------------------------------------------------------------------------- parent
def environment() -> dict:
    import pandas as pd
    import scipy

    cpu = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) * 1024
    except OSError:
        pass
    blas = []
    try:
        from threadpoolctl import threadpool_info

        import scipy.linalg  # noqa: F401  (load scipy's BLAS too)
        blas = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer",
                                         "architecture", "filepath")} for d in threadpool_info()]
    except Exception:
        pass
    commit = None
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "featharm"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (featharm/ has uncommitted changes)" if dirty else ""
    except Exception:
        pass
    import featharm

    return dict(cpu=cpu, cores=os.cpu_count(), mem_bytes=mem, python=platform.python_version(),
                numpy=np.__version__, scipy=scipy.__version__, pandas=pd.__version__, blas=blas,
                featharm=featharm.__version__, git=commit,
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def summarize(res: dict) -> dict:
    out = {}
    for mode, runs in res["runs"].items():
        walls = [r["wall"] for r in runs]
        peaks = [r["peak_bytes"] for r in runs]
        out[mode] = dict(wall_median=statistics.median(walls), wall_min=min(walls), wall_max=max(walls),
                         peak_bytes=max(peaks), peak_x_input=max(peaks) / res["input_bytes"], k=len(runs))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="small,large", help="comma-separated: small,large")
    ap.add_argument("--skip", default="", help="comma-separated implementations to skip: "
                                               "featharm,neuroHarmonize,neuroCombat")
    ap.add_argument("--repeat", type=int, default=3, help="featharm repeats per mode on the large case "
                                                          "(median reported)")
    ap.add_argument("--repeat-small", type=int, default=10, help="repeats of every implementation on the "
                                                                 "small case (fast and noisy)")
    ap.add_argument("--peer-repeat-large", type=int, default=1, help="peer repeats on the large case")
    ap.add_argument("--prefault", type=float, default=2.0,
                    help="before every timed call, touch and free a scratch buffer of this many times the input "
                         "size (see prefault(); 0 = off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write all measurements to this JSON file")
    ap.add_argument("--workdir", default=None, help="where the outputs are kept for the parity check "
                                                     "(default: a temporary directory, removed at the end)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run (wall, CPU and system time, "
                                                                  "load average)")
    ap.add_argument("--no-check", action="store_true", help="skip the cross-implementation parity check")
    ap.add_argument("--isolate", action="store_true",
                    help="run every (implementation, case) in its own child process instead of side by side in "
                         "this one (memory high-water marks then cannot carry over between implementations)")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        impl, case = args.child
        res = child(impl, case, args.repeat, Path(args.workdir), args.seed, save=not args.no_check,
                    prefault_x=args.prefault)
        Path(args.result).write_text(json.dumps(res))
        return 0

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {list(CASES)}")
    skip = {s.strip().lower() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {i.lower() for i in IMPLS}
    if unknown:
        ap.error(f"unknown implementation(s) in --skip: {sorted(unknown)}; choose from {list(IMPLS)}")
    impls = []
    for impl in IMPLS:
        if impl.lower() in skip:
            continue
        if importlib.util.find_spec(impl) is None:
            print(f"note: {impl} is not installed; skipped "
                  f"(pip install {'--no-deps ' if impl == 'neuroHarmonize' else ''}{impl})")
            continue
        impls.append(impl)

    env = environment()
    print(f"machine: {env['cpu']}, {env['cores']} cores, {env['mem_bytes'] / 2**30:.1f} GiB RAM; "
          f"python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, pandas {env['pandas']}")
    for b in env["blas"]:
        print(f"  BLAS: {b['internal_api']} {b['version']} ({b['architecture']}), {b['num_threads']} threads, "
              f"{Path(b['filepath'] or '').name}")
    print(f"featharm {env['featharm']} @ {env['git']}", flush=True)

    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_combat_")
        workdir = Path(tmp.name)

    results = []
    parity = []
    try:
        for case in cases:
            case_res = {}
            for impl in impls:
                if case == "small":
                    k = args.repeat_small
                else:
                    k = args.repeat if impl == "featharm" else args.peer_repeat_large
                result_file = workdir / f"result_{impl}_{case}.json"
                cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, case, "--repeat", str(k),
                       "--seed", str(args.seed), "--prefault", str(args.prefault), "--workdir", str(workdir), "--result", str(result_file)]
                if args.no_check:
                    cmd.append("--no-check")
                print(f"[{case}] {impl}: running (x{k}) ...", flush=True)
                t0 = time.perf_counter()
                if args.isolate:
                    proc = subprocess.run(cmd)
                    if proc.returncode != 0:
                        print(f"[{case}] {impl}: FAILED (exit code {proc.returncode})", flush=True)
                        continue
                    res = json.loads(result_file.read_text())
                else:  # side by side in this process (the default)
                    res = child(impl, case, k, workdir, args.seed, save=not args.no_check,
                                prefault_x=args.prefault)
                    gc.collect()
                res["summary"] = summarize(res)
                res["child_seconds"] = time.perf_counter() - t0
                for note in res["notes"]:
                    print(f"[{case}] {impl}: {note}")
                if args.verbose:
                    for mode, runs in res["runs"].items():
                        print(f"[{case}] {impl} {mode}: " + ", ".join(
                            f"{r['wall']:.2f} s (cpu {r['cpu']:.2f}, sys {r['sys']:.2f}, load {r['load1_before']:.1f})"
                            for r in runs))
                s = res["summary"]["fit_transform"]
                print(f"[{case}] {impl}: {s['wall_median']:.3f} s, peak +{s['peak_bytes'] / 1e9:.3f} GB "
                      f"({s['peak_x_input']:.2f}x input)", flush=True)
                case_res[impl] = res
                results.append(res)
            if not args.no_check:
                parity += check_parity(case, case_res)
    finally:
        if tmp is not None:
            tmp.cleanup()

    print_table(results, parity, env)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(environment=env, results=results, parity=parity), indent=1))
        print(f"\nwrote {args.out}")
    return 0


def check_parity(case: str, case_res: dict) -> list:
    done = [i for i in IMPLS if i in case_res and case_res[i].get("output")]
    rows = []
    arrays = {i: np.load(case_res[i]["output"], mmap_mode="r") for i in done}
    for a_i in range(len(done)):
        for b_i in range(a_i + 1, len(done)):
            a, b = done[a_i], done[b_i]
            d = _maxdiff(arrays[a], arrays[b])
            scale = _maxabs(arrays[a])
            rows.append(dict(case=case, a=a, b=b, max_abs_diff=d, max_abs_value=scale))
    for i in done:
        os.remove(case_res[i]["output"])
    return rows


def print_table(results, parity, env):
    print()
    print("Wall time = median over k runs of the call alone; peak = resident-memory high-water mark during the "
          "call minus the resident set before it (input already loaded); x input = peak / (n*p*8 bytes).")
    hdr = f"{'implementation':<26}{'case':<7}{'n x p':>15}{'k':>3}{'wall s':>10}{'[min-max]':>18}" \
          f"{'peak GB':>9}{'x input':>9}{'time ratio':>11}{'mem ratio':>10}"
    print(hdr)
    print("-" * len(hdr))
    fh = {r["case"]: r["summary"]["fit_transform"] for r in results if r["impl"] == "featharm"}
    for r in results:
        for mode, s in r["summary"].items():
            name = r["impl"] if r["impl"] != "featharm" else f"featharm {mode}"
            base = fh.get(r["case"])
            ratio = mratio = ""
            if r["impl"] != "featharm" and base:
                ratio = f"{s['wall_median'] / base['wall_median']:.1f}x"
                mratio = f"{s['peak_bytes'] / base['peak_bytes']:.1f}x" if base["peak_bytes"] > 0 else ""
            rng = f"[{s['wall_min']:.3f}-{s['wall_max']:.3f}]" if s["k"] > 1 else ""
            print(f"{name:<26}{r['case']:<7}{r['n']:>7,} x {r['p']:<6,}{s['k']:>2}{s['wall_median']:>10.3f}"
                  f"{rng:>18}{s['peak_bytes'] / 1e9:>9.3f}{s['peak_x_input']:>9.2f}{ratio:>11}{mratio:>10}")
    print("(time ratio / mem ratio = peer / featharm fit_transform, same case)")
    for r in results:
        if r["impl"] == "featharm" and r["case"] == "large":
            s = r["summary"]["fit_transform"]
            ok_t = s["wall_median"] <= TARGET_SECONDS
            ok_m = s["peak_x_input"] <= TARGET_MEMORY
            print(f"\ntargets (large case, featharm fit_transform): wall {s['wall_median']:.2f} s <= "
                  f"{TARGET_SECONDS:g} s: {'MET' if ok_t else 'NOT MET'}; peak {s['peak_x_input']:.2f}x input <= "
                  f"{TARGET_MEMORY:g}x: {'MET' if ok_m else 'NOT MET'}")
    if parity:
        print("\nagreement (same data, harmonized outputs):")
        for row in parity:
            print(f"  [{row['case']}] max |{row['a']} - {row['b']}| = {row['max_abs_diff']:.3g} "
                  f"(max |value| {row['max_abs_value']:.3g})")
    print()
    seen = set()
    for r in results:
        if r["case"] not in seen:
            seen.add(r["case"])
            print(f"[{r['case']}] {r['sites']} sites, sizes {r['site_size_min']}..{r['site_size_max']}; input "
                  f"{r['input_bytes'] / 1e9:.3f} GB; memory method: {r['memory_method']}; prefault "
                  f"{r['prefault_x']:g}x input before each call")
    loads = [run["load1_before"] for r in results for runs in r["runs"].values() for run in runs]
    if loads:
        print(f"1-min load average before the timed calls: {min(loads):.2f}..{max(loads):.2f} "
              f"(>{os.cpu_count()} means other processes competed for the cores)")


if __name__ == "__main__":
    sys.exit(main())
