"""Threads for the diagnostics' independent blocks (feature blocks of the per-feature tests, feature blocks
of the PERMANOVA null, CV folds of the classification null).

The work inside a block is numpy, scipy.sparse and LAPACK, which release the GIL, so threads run blocks on
several cores. As many threads as the BLAS is allowed (so ``OPENBLAS_NUM_THREADS=1`` or a threadpoolctl
limit keeps the diagnostics on one core), at most the CPUs available and :data:`MAX_THREADS`; meanwhile the
BLAS itself runs single-threaded, so the two kinds of threads do not compete. Results are assembled in
block order: the numbers do not depend on the number of threads.

How many: :func:`sized_by_features` sets the BLAS threads of a whole diagnostics call with
:func:`featharm._threads.choose_blas_threads`, which counts the CPUs that the rest of the machine leaves free
(so a shared, busy machine keeps one thread). The diagnostics are hundreds of passes over the table
(permutations, CV folds), not one as a model fit, so they are threaded from :data:`THREADED` elements
(rows × features) on, a much smaller table than the models' ``SMALL_PROBLEM``; below it one thread.
``n_jobs`` (the functions' parameter) overrides the choice as in the models.
"""

from __future__ import annotations

import contextlib
import os

MAX_THREADS = 4
# rows × features from which a diagnostics call may use more than one thread (5,000 × 50; IXI's 556 × 68 stays serial)
THREADED = 250_000


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def n_threads() -> int:
    """Threads :func:`workers` uses: min(BLAS threads, CPUs, MAX_THREADS), at least 1."""
    try:
        from .._threads import _get_controller

        blas = [i["num_threads"] for i in _get_controller().info() if i["user_api"] == "blas"]
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        blas = []
    return max(1, min(MAX_THREADS, _cpus(), min(blas) if blas else _cpus()))


def _serial(fn, items):
    return [fn(x) for x in items]


@contextlib.contextmanager
def workers():
    """``with workers() as pmap: results = pmap(fn, items)`` — ``fn`` over ``items`` on threads, in order."""
    k = n_threads()
    if k == 1:
        yield _serial
        return
    from concurrent.futures import ThreadPoolExecutor

    from .._threads import _get_controller

    with _get_controller().limit(limits=1, user_api="blas"), ThreadPoolExecutor(k) as ex:
        yield lambda fn, items: list(ex.map(fn, items))


def work_size(n_elements: int) -> int:
    """The problem size the diagnostics report to featharm's thread rule for a table of ``n_elements``
    values: from :data:`THREADED` on, at least the models' ``SMALL_PROBLEM`` (so the rule counts free CPUs)."""
    from .._threads import SMALL_PROBLEM

    return int(n_elements) if n_elements < THREADED else max(int(n_elements), SMALL_PROBLEM)


def diagnostics_threads(n_elements: int, n_jobs=None, **machine) -> int:
    """The threads of a diagnostics call on a table of ``n_elements`` values: ``n_jobs`` if given (as in
    :func:`featharm._threads.choose_blas_threads`), else one below :data:`THREADED` elements and otherwise
    the free CPUs that :func:`~featharm._threads.choose_blas_threads` counts for a large problem.
    ``machine``: that function's keyword arguments describing the machine (for tests)."""
    from .._threads import choose_blas_threads

    return choose_blas_threads(work_size(n_elements), n_jobs, **machine)


def sized_by_features(fn):
    """Decorator: run ``fn(X, ..., n_jobs=None)`` with the BLAS threads of :func:`diagnostics_threads`
    (which :func:`workers` then uses for its blocks): one thread on a small table, on a large one as many
    as the machine has free (a shared, busy machine keeps one: the many medium-sized products lose more to
    waiting for a busy core than they gain from a second one). ``n_jobs`` is the caller's keyword (default
    None: featharm chooses)."""
    import functools

    import numpy as np

    from .._threads import blas_threads_for, check_n_jobs

    @functools.wraps(fn)
    def wrapper(X, *args, **kwargs):
        n_jobs = kwargs.get("n_jobs")
        check_n_jobs(n_jobs, fn.__name__)
        shape = np.shape(X) if hasattr(X, "shape") else ()
        size = int(np.prod(shape)) if len(shape) == 2 else 0
        with blas_threads_for(work_size(size), n_jobs):
            return fn(X, *args, **kwargs)

    return wrapper
