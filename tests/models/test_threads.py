"""BLAS threading: small problems run with one BLAS thread, large ones keep the BLAS's own setting."""

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
