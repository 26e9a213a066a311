"""Threads for the diagnostics' independent blocks (feature blocks of the per-feature tests, feature blocks
of the PERMANOVA null, CV folds of the classification null).

The work inside a block is numpy, scipy.sparse and LAPACK, which release the GIL, so threads run blocks on
several cores. As many threads as the BLAS is allowed (so ``OPENBLAS_NUM_THREADS=1`` or a threadpoolctl
limit keeps the diagnostics on one core), at most the CPUs available and :data:`MAX_THREADS`; meanwhile the
BLAS itself runs single-threaded, so the two kinds of threads do not compete. Results are assembled in
block order: the numbers do not depend on the number of threads.
"""

from __future__ import annotations

import contextlib
import os

MAX_THREADS = 4


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


def sized_by_features(fn):
    """Decorator: run ``fn(X, ...)`` under featharm's BLAS policy sized by ``X`` (one BLAS thread below
    :data:`featharm._threads.SMALL_PROBLEM` elements, as the models; :func:`featharm._threads.blas_threads_for`),
    which also keeps :func:`workers` to one thread there. On a shared or small machine the diagnostics' many
    medium-sized products lose more to waiting for a busy core than they gain from a second one."""
    import functools

    import numpy as np

    from .._threads import blas_threads_for

    @functools.wraps(fn)
    def wrapper(X, *args, **kwargs):
        shape = np.shape(X) if hasattr(X, "shape") else ()
        with blas_threads_for(int(np.prod(shape)) if len(shape) == 2 else 0):
            return fn(X, *args, **kwargs)

    return wrapper
