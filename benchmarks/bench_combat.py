#!/usr/bin/env python
"""Time featharm's ComBat per input layout against every Python peer, side by side in one process.

Cases (30 sites with unbalanced Dirichlet sizes, covariates age + sex, site location and scale effects):

* ``small``: n = 1,000 subjects, p = 150 features
* ``large``: n = 10,000 subjects, p = 20,000 features (the input is n * p * 8 B = 1.6 GB)
* ``quick``: n = 2,000, p = 2,000 (a minute's check of the whole script); ``medium``: n = 10,000, p = 5,000

featharm is timed on each input a user passes (``--inputs``; each built outside the timing):

* ``frame``: ``pd.DataFrame(Y)`` from a C-ordered array (pandas copies it into its own column blocks);
* ``c-array``: the C-ordered ndarray itself; ``f-array``: a Fortran-ordered ndarray;
* ``frame-view``: a DataFrame over a Fortran-ordered array without a copy (the old benchmark's input);
* ``float32``: ``pd.DataFrame(Y.astype(np.float32))`` (half the memory; the output stays float32).

For each input: ``fit``, ``transform`` (of the fitted model) and ``fit_transform``, ``--repeat`` times
each (median), and, for scale, the time of a copy of the same array in its own layout (``np.copy``: one
read and one write of the data, the floor of a transform) and of numpy's default ``Y.copy()`` (C order).
The peers (neuroHarmonize ``harmonizationLearn``, neuroCombat, combatlearn ``ComBat(method="fortin")``,
combaters ``combat``; each optional, skipped when not installed) run once on the large case, ``--repeat``
times on the small one, on the Fortran-ordered array (or the DataFrame over it).

* wall time: ``time.perf_counter`` around the call only (data creation and imports excluded);
* peak memory: the process's resident-set high-water mark during the call minus the resident set just
  before it. The high-water mark is reset before every call by writing ``5`` to ``/proc/self/clear_refs``
  and read from ``VmHWM`` in ``/proc/self/status`` (Linux). This counts everything the call touches
  (numpy arrays, pandas copies, BLAS buffers, the returned output), and is reported in GB and as a
  multiple of the input size. Without ``clear_refs`` the script falls back to
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (lifetime high-water mark; flagged in the output).
* the 1-minute load average before each call is recorded (this machine is shared; > 2 means other
  processes competed for the 2 cores).

Each implementation's output is kept (``--workdir``) and the max |difference| to featharm's printed.

Usage::

    python benchmarks/bench_combat.py --cases large               # all inputs, all installed peers
    python benchmarks/bench_combat.py --quick                     # the quick case, featharm and combaters
    python benchmarks/bench_combat.py --cases small --repeat 5
    python benchmarks/bench_combat.py --skip neuroCombat --out results.json
    python benchmarks/bench_combat.py --cases large --skip peers  # featharm only

The peers are optional, benchmark-only references (never dependencies of featharm):
``pip install neuroCombat``, ``pip install --no-deps neuroHarmonize``, ``pip install --no-deps
combatlearn`` (it needs only numpy, pandas, scipy and scikit-learn for ComBat), ``pip install combaters``
(Rust). neuroHarmonize imports ``nibabel`` at module level (only its NIfTI helpers use it); when nibabel is
absent, an empty stand-in module is registered so that ``harmonizationLearn`` can be imported.
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

# the featharm of this checkout, not another installed copy (``python benchmarks/x.py`` puts benchmarks/ first)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {
    "small": dict(n=1_000, p=150, sites=30),
    "large": dict(n=10_000, p=20_000, sites=30),
    "quick": dict(n=2_000, p=2_000, sites=30),
    "medium": dict(n=10_000, p=5_000, sites=30),
}
IMPLS = ("featharm", "neuroHarmonize", "neuroCombat", "combatlearn", "combaters")
PEERS = IMPLS[1:]
INPUTS = ("frame", "c-array", "f-array", "frame-view", "float32")
TARGET_RATIO = 25.0  # featharm fit_transform at least this much faster than neuroHarmonize, every input
TARGET_SPREAD = 1.3  # slowest input / fastest input
TARGET_MEMORY = 2.0  # peak increase as a multiple of the input (n * p * itemsize)


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


def make_input(kind: str, Y: np.ndarray, cov):
    """The features as a user passes them (see the module docstring); built outside the timing."""
    import pandas as pd

    names = [f"roi{j:05d}" for j in range(Y.shape[1])]
    if kind == "frame":  # pd.DataFrame of a C-ordered array: pandas copies it into its column blocks
        return pd.DataFrame(np.ascontiguousarray(Y), index=cov.index, columns=names)
    if kind == "c-array":
        return np.ascontiguousarray(Y)
    if kind == "f-array":
        return np.asfortranarray(Y)
    if kind == "frame-view":  # the DataFrame is a view of the Fortran-ordered array (no copy)
        X = pd.DataFrame(Y, index=cov.index, columns=names, copy=False)
        assert np.shares_memory(X.to_numpy(copy=False), Y)
        return X
    if kind == "float32":
        return pd.DataFrame(Y.astype(np.float32), index=cov.index, columns=names)
    raise ValueError(kind)


def _values(X) -> np.ndarray:
    return X.to_numpy(copy=False) if hasattr(X, "to_numpy") else X


def _layout(A: np.ndarray) -> str:
    return "C" if A.flags.c_contiguous and not A.flags.f_contiguous else "F" if A.flags.f_contiguous else "strided"


def child(impl: str, case: str, repeat: int, workdir: Path, seed: int, save: bool,
          prefault_x: float, inputs=("frame", "c-array", "f-array")) -> dict:
    import pandas as pd

    spec = CASES[case]
    n, p = spec["n"], spec["p"]
    t0 = time.perf_counter()
    Y, cov = make_data(n, p, spec["sites"], seed)
    t_data = time.perf_counter() - t0
    meter = Meter(int(prefault_x * n * p * 8))
    notes = []
    runs: dict[str, list] = {}
    input_info: dict[str, dict] = {}

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

    def timed(mode, make_call, k, warm=None):
        """Warm up once on the tiny data, then time ``k`` calls on the real data; return the last output."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (warm or make_call(Yw, covw))()
        res = None
        for _ in range(k):
            res = None  # free the previous output before measuring the next call
            res = record(mode, make_call(Y, cov))
        return res

    if impl == "featharm":
        import featharm

        version = featharm.__version__

        def new():
            return featharm.ComBat(batch="site", formula="age + sex")

        order = sorted(inputs, key=lambda kind: kind != "f-array")  # the reference output first
        for kind in order:
            X = make_input(kind, Y, cov)
            Xw = make_input(kind, Yw, covw)
            A = _values(X)
            input_info[kind] = dict(layout=_layout(A), dtype=str(A.dtype), bytes=int(A.nbytes))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new().fit_transform(Xw, covw)
            timed(f"{kind}:copy", lambda Y_, cov_: (lambda: np.copy(A)), repeat, warm=lambda: None)
            timed(f"{kind}:copy_C", lambda Y_, cov_: (lambda: A.copy()), 1, warm=lambda: None)
            out = timed(f"{kind}:fit_transform", lambda Y_, cov_: (lambda: new().fit_transform(X, cov)), repeat,
                        warm=lambda: None)
            out_arr = _values(out)
            input_info[kind]["output_dtype"] = str(out_arr.dtype)
            if kind == "f-array" and save:
                np.save(out_path, out_arr)
            elif save and out_path.exists():
                input_info[kind]["max_diff_vs_f_array"] = _maxdiff(out_arr, np.load(out_path, mmap_mode="r"))
            del out, out_arr
            hm = timed(f"{kind}:fit", lambda Y_, cov_: (lambda: new().fit(X, cov)), repeat, warm=lambda: None)
            out2 = timed(f"{kind}:transform", lambda Y_, cov_: (lambda: hm.transform(X, cov)), repeat,
                         warm=lambda: None)
            if save and out_path.exists():
                input_info[kind]["max_diff_transform_vs_f_array"] = _maxdiff(_values(out2),
                                                                             np.load(out_path, mmap_mode="r"))
            del out2, hm, X, Xw, A
            gc.collect()
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
    elif impl == "combatlearn":
        from combatlearn import ComBat as CLComBat

        version = _dist_version("combatlearn")

        def call(Y_, cov_):  # its sklearn wrapper on a DataFrame (a view of the array)
            X_ = pd.DataFrame(Y_, index=cov_.index, copy=False)

            def run():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return CLComBat(batch=cov_["site"], discrete_covariates=cov_[["sex"]],
                                    continuous_covariates=cov_[["age"]], method="fortin").fit_transform(X_)
            return run

        out = timed("fit_transform", call, repeat)
        if save:
            np.save(out_path, _values(out))
        del out
    elif impl == "combaters":
        import combaters

        version = _dist_version("combaters")
        Yc = np.ascontiguousarray(Y)  # its preferred layout (it copies anything else to C order)
        Ycw = np.ascontiguousarray(Yw)

        def call(Y_, cov_):
            mod = pd.DataFrame({"age": cov_["age"].to_numpy(), "sex": (cov_["sex"] == "M").astype(float).to_numpy()})
            vals = Yc if Y_ is Y else Ycw
            batch = cov_["site"].to_numpy()

            def run():
                return combaters.combat(vals, batch, mod=mod)["adjusted"]
            return run

        out = timed("fit_transform", call, repeat)
        if save:
            np.save(out_path, np.asarray(out))
        del out, Yc
    else:  # pragma: no cover
        raise ValueError(impl)

    sizes = cov["site"].value_counts()
    return dict(impl=impl, case=case, version=version, n=n, p=p, sites=spec["sites"],
                site_size_min=int(sizes.min()), site_size_max=int(sizes.max()),
                input_bytes=n * p * 8, data_seconds=t_data, prefault_x=prefault_x, memory_method=meter.method,
                notes=notes, runs=runs, inputs=input_info, output=str(out_path) if save else None)


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
        kind = mode.split(":")[0] if ":" in mode else None
        nbytes = res.get("inputs", {}).get(kind, {}).get("bytes", res["input_bytes"])
        out[mode] = dict(wall_median=statistics.median(walls), wall_min=min(walls), wall_max=max(walls),
                         peak_bytes=max(peaks), peak_x_input=max(peaks) / nbytes, k=len(runs),
                         load=[r["load1_before"] for r in runs])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="small,large", help="comma-separated: small,large,quick")
    ap.add_argument("--quick", action="store_true", help="the quick case only (n = 2,000, p = 2,000)")
    ap.add_argument("--inputs", default="frame,c-array,f-array,float32",
                    help=f"featharm's inputs, comma-separated from {','.join(INPUTS)}")
    ap.add_argument("--skip", default="", help="comma-separated implementations to skip: "
                                               f"{','.join(IMPLS)}, or 'peers' for all peers")
    ap.add_argument("--repeat", type=int, default=3, help="featharm repeats per mode and input on the large "
                                                          "case (median reported)")
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
    inputs = [i.strip() for i in args.inputs.split(",") if i.strip()]
    bad = [i for i in inputs if i not in INPUTS]
    if bad:
        ap.error(f"unknown input(s) {bad}; choose from {list(INPUTS)}")

    if args.child:
        impl, case = args.child
        res = child(impl, case, args.repeat, Path(args.workdir), args.seed, save=not args.no_check,
                    prefault_x=args.prefault, inputs=inputs)
        Path(args.result).write_text(json.dumps(res))
        return 0

    cases = ["quick"] if args.quick else [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {list(CASES)}")
    skip = {s.strip().lower() for s in args.skip.split(",") if s.strip()}
    if "peers" in skip:
        skip = (skip - {"peers"}) | {i.lower() for i in PEERS}
    unknown = skip - {i.lower() for i in IMPLS}
    if unknown:
        ap.error(f"unknown implementation(s) in --skip: {sorted(unknown)}; choose from {list(IMPLS)} or peers")
    impls = []
    for impl in IMPLS:
        if impl.lower() in skip:
            continue
        if importlib.util.find_spec(impl) is None:
            print(f"note: {impl} is not installed; skipped "
                  f"(pip install {'--no-deps ' if impl in ('neuroHarmonize', 'combatlearn') else ''}{impl})")
            continue
        impls.append(impl)

    env = environment()
    print(f"machine: {env['cpu']}, {env['cores']} cores, {env['mem_bytes'] / 2**30:.1f} GiB RAM; "
          f"python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, pandas {env['pandas']}")
    for b in env["blas"]:
        print(f"  BLAS: {b['internal_api']} {b['version']} ({b['architecture']}), {b['num_threads']} threads, "
              f"{Path(b['filepath'] or '').name}")
    import featharm

    print(f"featharm {env['featharm']} from {Path(featharm.__file__).parent} @ {env['git']}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}", flush=True)

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
                       "--seed", str(args.seed), "--prefault", str(args.prefault), "--workdir", str(workdir),
                       "--result", str(result_file), "--inputs", ",".join(inputs)]
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
                                prefault_x=args.prefault, inputs=inputs)
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
                for mode, sm in res["summary"].items():
                    if mode.endswith("fit_transform"):
                        print(f"[{case}] {impl} {mode}: {sm['wall_median']:.3f} s, peak +{sm['peak_bytes'] / 1e9:.3f} "
                              f"GB ({sm['peak_x_input']:.2f}x input)", flush=True)
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
    done = [i for i in IMPLS if i in case_res and case_res[i].get("output") and Path(case_res[i]["output"]).exists()]
    rows = []
    arrays = {i: np.load(case_res[i]["output"], mmap_mode="r") for i in done}
    if "featharm" in arrays:
        scale = _maxabs(arrays["featharm"])
        for b in done:
            if b != "featharm":
                rows.append(dict(case=case, a="featharm", b=b, max_abs_diff=_maxdiff(arrays["featharm"], arrays[b]),
                                 max_abs_value=scale))
    del arrays
    for i in done:
        os.remove(case_res[i]["output"])
    return rows


def print_table(results, parity, env):
    print()
    print("Wall time = median over k runs of the call alone; peak = resident-memory high-water mark during the "
          "call minus the resident set before it (input already loaded); x input = peak / input bytes; load = "
          "1-minute load average before the runs.")
    for case in dict.fromkeys(r["case"] for r in results):
        rs = [r for r in results if r["case"] == case]
        fh = next((r for r in rs if r["impl"] == "featharm"), None)
        nh = next((r for r in rs if r["impl"] == "neuroHarmonize"), None)
        nh_wall = nh["summary"]["fit_transform"]["wall_median"] if nh else None
        r0 = rs[0]
        print(f"\n[{case}] n = {r0['n']:,}, p = {r0['p']:,}, {r0['sites']} sites (sizes {r0['site_size_min']}.."
              f"{r0['site_size_max']}), input {r0['input_bytes'] / 1e9:.2f} GB as float64")
        if fh:
            hdr = (f"{'featharm input':<14}{'layout':>7}{'copy s':>8}{'fit s':>8}{'transform s':>12}"
                   f"{'fit_transform s':>16}{'peak x':>8}{'x copy':>8}{'vs nH':>8}{'load':>11}")
            print(hdr)
            print("-" * len(hdr))
            fts = {}
            for kind, info in fh["inputs"].items():
                sm = fh["summary"]
                ft, f, t, c = (sm[f"{kind}:{m}"] for m in ("fit_transform", "fit", "transform", "copy"))
                fts[kind] = ft["wall_median"]
                peak = max(ft["peak_x_input"], f["peak_x_input"], t["peak_x_input"])
                loads = ft["load"] + f["load"] + t["load"]
                ratio = f"{nh_wall / ft['wall_median']:.1f}x" if nh_wall else ""
                print(f"{kind:<14}{info['layout'] + ('/f32' if 'float32' in info['dtype'] else ''):>7}"
                      f"{c['wall_median']:>8.3f}{f['wall_median']:>8.3f}{t['wall_median']:>12.3f}"
                      f"{ft['wall_median']:>16.3f}{peak:>8.2f}{ft['wall_median'] / c['wall_median']:>8.1f}"
                      f"{ratio:>8}{min(loads):>5.1f}-{max(loads):<5.1f}")
            f64 = {k: v for k, v in fts.items() if "float32" not in fh["inputs"][k]["dtype"]}
            if f64:
                spread = max(f64.values()) / min(f64.values())
                print(f"slowest/fastest float64 input (fit_transform): {spread:.2f} (target <= {TARGET_SPREAD})")
                if nh_wall:
                    worst = nh_wall / max(f64.values())
                    print(f"neuroHarmonize / slowest featharm input: {worst:.1f}x (target >= {TARGET_RATIO:g}x)")
            for kind, info in fh["inputs"].items():
                extra = ", ".join(f"{k} {v:.3g}" for k, v in info.items() if k.startswith("max_diff"))
                print(f"  {kind}: output {info['output_dtype']}" + (f"; {extra}" if extra else ""))
        peers = [r for r in rs if r["impl"] != "featharm"]
        if peers:
            base = min(fts.values()) if fh else None
            print(f"{'peer':<16}{'version':>9}{'fit_transform s':>17}{'peak GB':>9}{'x input':>9}"
                  f"{'/ featharm':>11}{'load':>6}")
            for r in peers:
                sm = r["summary"]["fit_transform"]
                rat = f"{sm['wall_median'] / base:.1f}x" if base else ""
                print(f"{r['impl']:<16}{str(r['version']):>9}{sm['wall_median']:>17.3f}{sm['peak_bytes'] / 1e9:>9.2f}"
                      f"{sm['peak_x_input']:>9.2f}{rat:>11}{min(sm['load']):>6.1f}")
            if fh:
                print("(/ featharm: peer time over featharm's fastest input)")
    if parity:
        print("\nagreement with featharm (f-array fit_transform; same data):")
        for row in parity:
            print(f"  [{row['case']}] max |{row['a']} - {row['b']}| = {row['max_abs_diff']:.3g} "
                  f"(max |value| {row['max_abs_value']:.3g})")
    print()
    for r in results[:1]:
        print(f"memory method: {r['memory_method']}; prefault {r['prefault_x']:g}x input before each call")
    loads = [run["load1_before"] for r in results for runs in r["runs"].values() for run in runs]
    if loads:
        print(f"1-min load average before the timed calls: {min(loads):.2f}..{max(loads):.2f} "
              f"(>{os.cpu_count()} means other processes competed for the cores)")


if __name__ == "__main__":
    sys.exit(main())
