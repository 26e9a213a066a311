"""BLAS threading for small problems.

On a small table (say 1,000 subjects × 150 features) every matrix product takes well under a
millisecond, and waking a multi-threaded BLAS for each one costs more than the product itself: on a
2-core machine a ComBat fit runs about 3 times faster with one BLAS thread. featharm therefore runs
problems below :data:`SMALL_PROBLEM` elements (rows × features) with one BLAS thread and leaves larger
ones to the BLAS's own threading. Only the BLAS libraries that are loaded are limited, only for the
duration of the call, and the setting is restored afterwards. Set the environment variable
``FEATHARM_BLAS_THREADS=default`` to never limit.

featharm's own passes over the data (the element-wise steps of the fit and the adjustment, which NumPy
runs on one core) are split into blocks; on a large problem the blocks are shared between as many threads
as the BLAS may use (:func:`block_workers`), so ``OPENBLAS_NUM_THREADS=1`` (or threadpoolctl's limits) keeps
featharm on one core too. ``FEATHARM_THREADS=N`` sets that number of threads directly.

How many BLAS threads a large problem gets (:func:`choose_blas_threads`, per call, with ``n_jobs=None``):
the CPUs this process may use (:func:`usable_cpus`: its CPU affinity, and a cgroup CPU quota rounded down),
at most what ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` and the BLAS's current
setting (a threadpoolctl limit around the call) allow, minus the CPUs other processes are using
(:func:`other_load`: the larger of the threads ready to run at that moment in ``/proc/loadavg``, less this
process's own, and the other processes' CPU use over about the last minute: the machine's busy time in
``/proc/stat`` less this process's, or without it the 1-minute load average less this process's CPU use). A
multi-threaded BLAS waits at every product for its slowest thread: on a 2-core machine with one other busy
process, a ComBat fit with two BLAS threads took 2.7 times as long as with one (issue 19), while on an idle
machine two threads save a third at most (``benchmarks/README.md``, "BLAS threads"). ``n_jobs`` on a model
(or an argument here) sets the number instead: a positive number is used as it is, ``-1`` means every usable
CPU, ``-2`` all but one, and so on.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time

import numpy as np

from ._core.parallel import SMALL_PROBLEM, _get_controller, block_workers, run_parallel

__all__ = ["SMALL_PROBLEM", "blas_threads_for", "sized_by_first_argument", "block_workers", "run_parallel",
           "choose_blas_threads", "usable_cpus", "other_runnable", "other_load", "check_n_jobs"]

# The busy fraction of a CPU below which it still counts as free (see choose_blas_threads).
FREE_SLACK = 0.25

# Environment variables a user (or a batch scheduler) sets to cap the threads of OpenMP / the BLAS.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def check_n_jobs(n_jobs, owner: str = "featharm") -> None:
    """``n_jobs`` must be None or a non-zero integer (raises :class:`~featharm.exceptions.InputError`)."""
    if n_jobs is None:
        return
    import numpy as np

    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        from .exceptions import InputError

        raise InputError(f"The 'n_jobs' parameter of {owner} must be None (automatic), a positive number of threads "
                         f"or a negative integer (-1: every usable CPU). Got {n_jobs!r} instead.")


def env_thread_limit(environ=None) -> int | None:
    """The smallest positive thread count set in :data:`THREAD_ENV` (``OMP_NUM_THREADS=4,2``: 4), or None."""
    environ = os.environ if environ is None else environ
    found = []
    for name in THREAD_ENV:
        text = str(environ.get(name, "")).strip().split(",")[0]
        try:
            n = int(text)
        except ValueError:
            continue
        if n >= 1:
            found.append(n)
    return min(found) if found else None


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPUs a cgroup CPU quota allows this process (e.g. 1.5), or None without a quota.

    cgroup v2: ``cpu.max`` ("max 100000" = none; "150000 100000" = 1.5 CPUs); cgroup v1:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of -1 = none).
    """
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = (f.read().split() + ["100000"])[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            with open(os.path.join(root, sub, "cpu.cfs_quota_us")) as f:
                quota = float(f.read())
            with open(os.path.join(root, sub, "cpu.cfs_period_us")) as f:
                period = float(f.read())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def affinity_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask; all CPUs where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def usable_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """CPUs this process can keep busy: its affinity, and a cgroup quota rounded down (at least 1).

    A quota of 1.5 CPUs gives 1: two threads sharing 1.5 CPUs are throttled in turn, and a BLAS thread
    that is throttled holds up the others at the next synchronization.
    """
    n = affinity_cpus() if affinity is None else int(affinity)
    if quota is None:
        quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, int(math.floor(quota)))
    return max(1, n)


def other_runnable() -> float:
    """Threads of other processes ready to run at this moment (on any CPU of the machine).

    Linux: the running/runnable count of ``/proc/loadavg`` (which includes this thread) less this process's
    own threads in state R; elsewhere, the 1-minute load average less one (this process).
    """
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        try:
            return max(0.0, os.getloadavg()[0] - 1.0)
        except (AttributeError, OSError):
            return 0.0
    own = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2:stat.rfind(")") + 3] == "R":
                own += 1
    except OSError:
        own = 1
    return float(max(0, running - max(own, 1)))


_cpu_marks: list[tuple] = []  # (monotonic time, CPU seconds of this process, of the whole machine) at recent calls


def _process_cpu() -> float:
    t = os.times()
    return t.user + t.system  # every thread of this process (not its children)


def _machine_cpu() -> float | None:
    """CPU seconds the whole machine has been busy since boot (every CPU: all but idle and I/O wait time, from
    the first line of ``/proc/stat``); None where unknown (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _mark() -> tuple:
    return (time.monotonic(), _process_cpu(), _machine_cpu())


_cpu_marks.append(_mark())  # at import


def _window(window: float) -> tuple[tuple, tuple]:
    """The reference mark (the newest at least ``window`` seconds old, else the oldest) and now; a mark is
    added at most every 5 seconds, so the list stays short."""
    now = _mark()
    while len(_cpu_marks) > 1 and now[0] - _cpu_marks[1][0] >= window:
        _cpu_marks.pop(0)
    ref = _cpu_marks[0]
    if now[0] - _cpu_marks[-1][0] >= 5.0:
        _cpu_marks.append(now)
    return ref, now


def own_cpu_rate(window: float = 60.0) -> float:
    """CPUs this process kept busy on average over about the last ``window`` seconds (since import if less)."""
    ref, now = _window(window)
    dt = now[0] - ref[0]
    return (now[1] - ref[1]) / dt if dt > 0.5 else 0.0


def others_cpu_rate(window: float = 60.0) -> float | None:
    """CPUs the other processes kept busy on average over the same window as :func:`own_cpu_rate`: the
    machine's busy CPU time less this process's, per second (``/proc/stat``). None where the machine's time is
    unknown, or over less than 2 seconds (too short to say)."""
    ref, now = _window(window)
    dt = now[0] - ref[0]
    if now[2] is None or len(ref) < 3 or ref[2] is None or dt < 2.0:
        return None
    return max(0.0, ((now[2] - ref[2]) - (now[1] - ref[1])) / dt)


def other_load() -> float:
    """The CPUs other processes are busy on: the larger of the threads ready to run at this moment
    (:func:`other_runnable`) and their CPU use over about the last minute. The first sees a competitor that has
    just started; the second a machine whose load comes and goes (other test suites, builds), which an instant
    may catch idle. The last minute is measured (:func:`others_cpu_rate`: the machine's busy time less this
    process's since a mark about a minute old); only without such a measure (not Linux, or a process a few
    seconds old) is it the 1-minute load average less this process's own CPU use. The load average lags: after
    this process kept both CPUs busy it stays high for a minute, and the difference then took this process's
    own recent work for another process's."""
    now = other_runnable()
    measured = others_cpu_rate()
    if measured is not None:
        return max(now, measured, 0.0)
    try:
        recent = os.getloadavg()[0] - own_cpu_rate()
    except (AttributeError, OSError):  # Windows
        recent = 0.0
    return max(now, recent, 0.0)


def choose_blas_threads(n_elements: int, n_jobs=None, *, cpus: int | None = None, host_cpus: int | None = None,
                        env_limit: int | None = None, current: int | None = None,
                        others: float | None = None) -> int:
    """The BLAS threads for one call on a table of ``n_elements`` values (see the module docstring).

    ``n_jobs``: None chooses; a positive number is returned as it is; -1 means ``cpus``, -2 ``cpus - 1``...
    The machine's state is read where not given (for tests): ``cpus`` (:func:`usable_cpus`), ``host_cpus``
    (``os.cpu_count()``: the CPUs ``others`` are spread over), ``env_limit`` (:func:`env_thread_limit`),
    ``current`` (the BLAS's current thread count, e.g. under a threadpoolctl limit) and ``others``
    (:func:`other_load`).
    """
    check_n_jobs(n_jobs)
    if cpus is None:
        cpus = usable_cpus()
    if n_jobs is not None:
        return int(n_jobs) if n_jobs > 0 else max(1, cpus + 1 + int(n_jobs))
    if n_elements < SMALL_PROBLEM:
        return 1
    ceiling = cpus
    env_limit = env_thread_limit() if env_limit is None else env_limit
    for cap in (env_limit, current):
        if cap is not None and cap >= 1:
            ceiling = min(ceiling, int(cap))
    if ceiling <= 1:
        return 1
    others = other_load() if others is None else others
    host_cpus = (os.cpu_count() or cpus) if host_cpus is None else host_cpus
    busy = others * min(1.0, cpus / max(host_cpus, 1))  # the share of the other threads on our CPUs
    # a CPU counts as free when at most a quarter of it is busy: on the 2-core machine, with others using
    # ~0.4 CPU, two threads gained nothing over one (benchmarks/README.md, "BLAS threads")
    return max(1, min(ceiling, int(math.floor(cpus - busy + FREE_SLACK))))


@contextlib.contextmanager
def blas_threads_for(n_elements: int, n_jobs=None):
    """Run the block with the BLAS threads :func:`choose_blas_threads` picks (see the module docstring)."""
    if n_jobs is None and os.environ.get("FEATHARM_BLAS_THREADS", "").lower() == "default":
        yield
        return
    try:
        ctl = _get_controller()
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    blas = ctl.select(user_api="blas")
    counts = [lib.num_threads for lib in blas.lib_controllers]
    if not counts:
        yield
        return
    current = min(counts)
    k = choose_blas_threads(n_elements, n_jobs, current=None if n_jobs is not None else current)
    if k == current and max(counts) == current:
        yield
        return
    with ctl.limit(limits=k, user_api="blas"):
        yield


def sized_by_first_argument(method):
    """Decorator: run ``method(self, X, ...)`` under :func:`blas_threads_for` sized by ``X`` (and the model's
    ``n_jobs``)."""

    @functools.wraps(method)
    def wrapper(self, X, *args, **kwargs):
        shape = np.shape(X) if hasattr(X, "shape") else ()
        size = int(np.prod(shape)) if len(shape) == 2 else SMALL_PROBLEM
        n_jobs = getattr(self, "n_jobs", None)  # a model's own setting (families with the parameter)
        check_n_jobs(n_jobs, type(self).__name__)
        with blas_threads_for(size, n_jobs):
            return method(self, X, *args, **kwargs)

    return wrapper

