"""BLAS threading: small problems run with one BLAS thread; large ones get the threads the CPUs this process
may use and the load of the machine allow (``choose_blas_threads``), or a model's ``n_jobs``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_info

import featharm as fh
from featharm import _threads


def _blas_threads():
    return sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})


def test_small_problem_runs_single_threaded_and_restores():
    before = _blas_threads()
    with _threads.blas_threads_for(1000):
        assert _blas_threads() == [1]
    assert _blas_threads() == before


def test_large_problem_and_opt_out_keep_the_setting(monkeypatch):
    """On an idle machine (mocked: no other runnable thread), a large problem keeps the BLAS's setting."""
    monkeypatch.setattr(_threads, "other_load", lambda: 0.0)
    monkeypatch.setattr(_threads, "usable_cpus", lambda: 64)
    before = _blas_threads()
    with _threads.blas_threads_for(_threads.SMALL_PROBLEM):
        assert _blas_threads() == before
    monkeypatch.setenv("FEATHARM_BLAS_THREADS", "default")
    with _threads.blas_threads_for(10):
        assert _blas_threads() == before


def test_fit_of_a_small_table_sees_one_thread(monkeypatch):
    seen = []
    original = fh.ComBat._fit_location

    def spy(self, *args, **kwargs):
        seen.append(_blas_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fh.ComBat, "_fit_location", spy)
    rng = np.random.default_rng(0)
    cov = pd.DataFrame({"site": np.repeat(["a", "b", "c"], 20), "age": rng.uniform(20, 80, 60)})
    X = pd.DataFrame(rng.normal(size=(60, 5)), columns=list("vwxyz"))
    before = _blas_threads()
    fh.ComBat(formula="age").fit(X, cov)
    assert seen == [[1]]
    assert _blas_threads() == before


# ------------------------------------------------------------------------------------------ the choice
def choose(n=10**8, n_jobs=None, **kw):
    machine = dict(cpus=2, host_cpus=2, env_limit=None, current=None, others=0.0)
    return _threads.choose_blas_threads(n, n_jobs, **{**machine, **kw})


def test_choice_small_problem_is_one_thread():
    assert choose(_threads.SMALL_PROBLEM - 1, cpus=16, host_cpus=16) == 1
    assert choose(_threads.SMALL_PROBLEM, cpus=16, host_cpus=16) == 16


def test_choice_follows_the_other_runnable_threads():
    assert choose() == 2                      # idle 2-core machine: both cores
    assert choose(others=1) == 1              # one CPU-bound competitor: one thread
    assert choose(others=5) == 1              # never below one
    assert choose(cpus=8, host_cpus=8, others=3) == 5
    assert choose(cpus=8, host_cpus=8, others=2.6) == 5   # 5.4 free CPUs
    assert choose(cpus=8, host_cpus=8, others=3.2) == 5   # 4.8 free: a CPU a fifth busy counts as free
    assert choose(cpus=8, host_cpus=8, others=3.3) == 4   # 4.7 free: one 30 % busy does not
    assert choose(others=0.2) == 2 and choose(others=0.4) == 1
    # 4 CPUs of a 64-CPU host: 16 busy threads elsewhere are spread over the host, 1 of them on ours
    assert choose(cpus=4, host_cpus=64, others=16) == 3


def test_choice_respects_affinity_quota_env_and_current_limit():
    assert choose(cpus=1, host_cpus=8) == 1
    assert choose(cpus=8, host_cpus=8, env_limit=3) == 3      # OMP_NUM_THREADS etc. cap the choice
    assert choose(cpus=8, host_cpus=8, current=1) == 1        # a threadpoolctl limit around the call
    assert choose(cpus=8, host_cpus=8, env_limit=3, others=6) == 2
    assert _threads.usable_cpus(affinity=8, quota=1.5) == 1   # throttled threads hold the others up
    assert _threads.usable_cpus(affinity=8, quota=3.0) == 3
    assert _threads.usable_cpus(affinity=2, quota=16.0) == 2
    assert _threads.usable_cpus(affinity=8, quota=0.5) == 1


def test_choice_explicit_n_jobs():
    assert choose(n_jobs=3, others=5) == 3    # used as given, whatever the load or size
    assert choose(1000, n_jobs=2) == 2
    assert choose(n_jobs=-1, cpus=6, host_cpus=6, others=5) == 6
    assert choose(n_jobs=-2, cpus=6, host_cpus=6) == 5
    assert choose(n_jobs=-10, cpus=6, host_cpus=6) == 1
    for bad in (0, 1.5, "2", True):
        with pytest.raises(ValueError, match="'n_jobs'"):
            choose(n_jobs=bad)


def test_env_thread_limit():
    env = {"OMP_NUM_THREADS": "4,2", "OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "junk"}
    assert _threads.env_thread_limit(env) == 3
    assert _threads.env_thread_limit({"OMP_NUM_THREADS": "4,2"}) == 4
    assert _threads.env_thread_limit({"MKL_NUM_THREADS": "0"}) is None
    assert _threads.env_thread_limit({}) is None


def test_env_variable_caps_the_automatic_choice(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert _threads.choose_blas_threads(10**8, cpus=8, host_cpus=8, others=0.0) == 1


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _threads.cgroup_cpu_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _threads.cgroup_cpu_quota(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _threads.cgroup_cpu_quota(str(v1)) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _threads.cgroup_cpu_quota(str(v1)) is None
    assert _threads.cgroup_cpu_quota(str(tmp_path / "absent")) is None


def test_other_runnable_counts_other_processes_only(monkeypatch):
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/loadavg":
            import io

            return io.StringIO("0.50 0.40 0.30 4/200 12345\n")  # 4 running, this thread among them
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(_threads, "open", fake_open, raising=False)
    got = _threads.other_runnable()
    assert got in (2.0, 3.0)  # 4 less this thread (and perhaps a BLAS thread of this process still spinning)


def test_other_load_takes_the_larger_of_now_and_the_last_minute(monkeypatch):
    monkeypatch.setattr(_threads, "others_cpu_rate", lambda: None)    # no measure: the load average's estimate
    monkeypatch.setattr(_threads, "other_runnable", lambda: 0.0)      # an instant when nothing else runs
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (2.5, 2.0, 1.5))
    monkeypatch.setattr(_threads, "own_cpu_rate", lambda: 1.0)         # this process: one busy CPU
    assert _threads.other_load() == 1.5                                # others kept 1.5 CPUs busy
    monkeypatch.setattr(_threads, "own_cpu_rate", lambda: 2.0)         # all of the load was this process
    assert _threads.other_load() == 0.5
    monkeypatch.setattr(_threads, "other_runnable", lambda: 1.0)      # a competitor that has just started
    assert _threads.other_load() == 1.0
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    monkeypatch.setattr(_threads, "other_runnable", lambda: 0.0)
    assert _threads.other_load() == 0.0


def test_other_load_measures_the_other_processes_over_the_last_minute(monkeypatch):
    """With the machine's busy time (/proc/stat), the last minute's load of the others is measured: the
    machine's CPU time less this process's. After this process kept both CPUs busy the load average stays high
    for a minute; that is not another process's load."""
    t, cpu, machine = [1000.0], [50.0], [500.0]
    monkeypatch.setattr(_threads.time, "monotonic", lambda: t[0])
    monkeypatch.setattr(_threads, "_process_cpu", lambda: cpu[0])
    monkeypatch.setattr(_threads, "_machine_cpu", lambda: machine[0])
    monkeypatch.setattr(_threads, "_cpu_marks", [(1000.0, 50.0, 500.0)])
    monkeypatch.setattr(_threads, "other_runnable", lambda: 0.0)
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (1.8, 1.0, 0.5))  # lagging after our own burst
    t[0], cpu[0], machine[0] = 1010.0, 70.0, 520.0   # this process kept 2 CPUs busy, nothing else ran
    assert _threads.others_cpu_rate() == pytest.approx(0.0)
    assert _threads.other_load() == 0.0
    assert _threads.choose_blas_threads(10**8, cpus=2, host_cpus=2, env_limit=None, current=None) == 2
    t[0], cpu[0], machine[0] = 1020.0, 70.0, 535.0   # then another process kept 1.5 CPUs busy for 10 s
    assert _threads.others_cpu_rate() == pytest.approx(15.0 / 20.0)
    monkeypatch.setattr(_threads, "other_runnable", lambda: 1.0)  # one of its threads is ready to run now
    assert _threads.other_load() == 1.0
    monkeypatch.setattr(_threads, "_machine_cpu", lambda: None)  # not Linux: the load average's estimate
    assert _threads.others_cpu_rate() is None


def test_own_cpu_rate_sees_this_process_compute(monkeypatch):
    t = [1000.0]
    cpu = [50.0]
    monkeypatch.setattr(_threads.time, "monotonic", lambda: t[0])
    monkeypatch.setattr(_threads, "_process_cpu", lambda: cpu[0])
    monkeypatch.setattr(_threads, "_cpu_marks", [(1000.0, 50.0)])
    t[0], cpu[0] = 1010.0, 60.0   # one CPU busy for 10 s
    assert _threads.own_cpu_rate() == pytest.approx(1.0)
    t[0], cpu[0] = 1070.0, 60.0   # then idle for 60 s: the window moved past the busy part
    assert _threads.own_cpu_rate() == pytest.approx(0.0)
    assert len(_threads._cpu_marks) <= 3


def test_blas_threads_for_limits_when_busy_and_restores(monkeypatch):
    monkeypatch.setattr(_threads, "other_load", lambda: 1.0)
    monkeypatch.setattr(_threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 2)
    before = _blas_threads()
    with _threads.blas_threads_for(10**8):
        assert _blas_threads() == [1]
    assert _blas_threads() == before
    with _threads.blas_threads_for(10**8, n_jobs=3):   # explicit: as given
        assert _blas_threads() == [3]
    assert _blas_threads() == before


def test_model_n_jobs_reaches_the_blas(monkeypatch):
    seen = []
    original = fh.ComBat._fit_location

    def spy(self, *args, **kwargs):
        seen.append(_blas_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fh.ComBat, "_fit_location", spy)
    rng = np.random.default_rng(0)
    cov = pd.DataFrame({"site": np.repeat(["a", "b", "c"], 20), "age": rng.uniform(20, 80, 60)})
    X = pd.DataFrame(rng.normal(size=(60, 5)), columns=list("vwxyz"))
    hm = fh.ComBat(formula="age", n_jobs=2).fit(X, cov)
    assert seen == [[2]]
    hm.set_params(n_jobs=0)
    with pytest.raises(ValueError, match="'n_jobs' parameter of ComBat"):
        hm.transform(X, cov)
